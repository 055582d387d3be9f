import type { Logger } from '../observe/log.ts';
import type { CertificateAuthority } from '../pki/ca.ts';
import type { Cluster, ClusterServing } from '../mode/mode.ts';
import { Gateway, type GatewayOptions } from './gateway/gateway.ts';
import type { SessionRegistry } from './registry.ts';

const CERT_DAYS = 365;
const RETRY_LISTEN_MS = 10_000;

export interface ClusterPortsOptions {
  name: string;
  host: string;
  /** names every serving certificate carries besides the cluster's own (the proxy's address, loopback) */
  baseNames: string[];
  ca: CertificateAuthority;
  registry: SessionRegistry;
  knows: (name: string) => boolean;
  /** identity, limits and access log, as the proxy's gateway has them */
  gateway: Pick<
    GatewayOptions,
    'identity' | 'limits' | 'accessLog' | 'impersonation' | 'inflight' | 'stalled' | 'metrics' | 'draining' | 'peers'
  >;
  log: Logger;
}

/**
 * A cluster's own two ports, as the Go tower serves them behind the mc-<name> Service: HTTPS
 * (tower's certificate for the Service's names, client certificates from tower's CA) to the member
 * kube-apiserver, plain HTTP to the member ks-apiserver.
 */
export class ClusterPorts {
  #opts: ClusterPortsOptions;
  #serve: ClusterServing | undefined;
  #kubernetes: Gateway | undefined;
  #kubesphere: Gateway | undefined;
  #retry: NodeJS.Timeout | undefined;
  #closed = false;
  /** serialises apply() calls */
  #busy: Promise<void> = Promise.resolve();

  constructor(opts: ClusterPortsOptions) {
    this.#opts = opts;
  }

  /** the two gateways while they serve */
  get gateways(): Gateway[] {
    return [this.#kubernetes, this.#kubesphere].filter((g) => g !== undefined);
  }

  apply(serve: ClusterServing): Promise<void> {
    this.#busy = this.#busy
      .then(() => this.#apply(serve))
      .catch((err: unknown) => {
        this.#opts.log.error('cannot serve cluster ports', { cluster: this.#opts.name, err: (err as Error).message });
      });
    return this.#busy;
  }

  async #apply(serve: ClusterServing): Promise<void> {
    if (this.#closed) return;
    const before = this.#serve;
    this.#serve = serve;
    const names = () => [...serve.names, ...this.#opts.baseNames];
    if (
      before &&
      before.kubernetesPort === serve.kubernetesPort &&
      before.kubespherePort === serve.kubespherePort &&
      this.#kubernetes &&
      this.#kubesphere
    ) {
      if (JSON.stringify(before.names) !== JSON.stringify(serve.names)) {
        const cert = await this.#opts.ca.issueServer(names(), CERT_DAYS);
        this.#kubernetes.setCertificate(cert.cert, cert.key);
        this.#opts.log.info('cluster certificate reissued', { cluster: this.#opts.name, names: serve.names.join(',') });
      }
      return;
    }
    await this.#stop();
    const { name, host, registry, knows, log, ca, gateway } = this.#opts;
    const cert = await ca.issueServer(names(), CERT_DAYS);
    const kubernetes = new Gateway({
      registry,
      knows,
      log,
      cluster: name,
      tls: { caPem: ca.certPem, cert: cert.cert, key: cert.key },
      ...gateway,
    });
    const kubesphere = new Gateway({
      registry,
      knows,
      log,
      cluster: name,
      target: 'kubesphere',
      limits: gateway.limits,
      accessLog: gateway.accessLog,
      inflight: gateway.inflight,
      stalled: gateway.stalled,
      metrics: gateway.metrics,
      draining: gateway.draining,
      peers: gateway.peers,
    });
    try {
      await kubernetes.listen(serve.kubernetesPort, host);
      this.#kubernetes = kubernetes;
      await kubesphere.listen(serve.kubespherePort, host);
      this.#kubesphere = kubesphere;
    } catch (err) {
      await Promise.all([kubernetes.close(), kubesphere.close()]);
      this.#kubernetes = this.#kubesphere = undefined;
      const code = (err as NodeJS.ErrnoException).code;
      log.error("cannot listen on the cluster's ports; retrying", {
        cluster: name,
        ports: `${serve.kubernetesPort},${serve.kubespherePort}`,
        err: code ?? (err as Error).message,
        fix:
          code === 'EADDRINUSE'
            ? 'another process holds the port: stop it, or give the Cluster other ports in spec.connection'
            : undefined,
      });
      this.#retry = setTimeout(() => {
        if (this.#serve === serve) void this.apply(serve);
      }, RETRY_LISTEN_MS);
      this.#retry.unref();
      return;
    }
    log.info('serving cluster ports', {
      cluster: name,
      kubernetes: `${host}:${serve.kubernetesPort}`,
      kubesphere: `${host}:${serve.kubespherePort}`,
    });
  }

  async #stop(): Promise<void> {
    clearTimeout(this.#retry);
    const closing = [this.#kubernetes?.close(), this.#kubesphere?.close()];
    this.#kubernetes = this.#kubesphere = undefined;
    await Promise.all(closing);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#busy;
    await this.#stop();
  }
}

/** Every cluster served on ports of its own (Kubernetes mode), following the clusters' records. */
export class ServedPorts {
  #base: Omit<ClusterPortsOptions, 'name'>;
  #ports = new Map<string, ClusterPorts>();

  constructor(base: Omit<ClusterPortsOptions, 'name'>) {
    this.#base = base;
  }

  /** the gateways of every cluster's ports */
  get gateways(): Gateway[] {
    return [...this.#ports.values()].flatMap((p) => p.gateways);
  }

  /** Serves `name` as its record says, or (undefined, or no ports in it) stops serving it. */
  apply(name: string, cluster: Cluster | undefined): void {
    let ports = this.#ports.get(name);
    if (!cluster?.serve) {
      if (ports) {
        this.#ports.delete(name);
        void ports.close();
      }
      return;
    }
    if (!ports) {
      ports = new ClusterPorts({ ...this.#base, name });
      this.#ports.set(name, ports);
    }
    void ports.apply(cluster.serve);
  }

  async close(): Promise<void> {
    await Promise.all([...this.#ports.values()].map((p) => p.close()));
  }
}
