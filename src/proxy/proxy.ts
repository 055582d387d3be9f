/**
 * The proxy's composition root: it builds the parts, wires them to each other, and owns start,
 * drain and close. What each part does lives in its own file:
 * - agent-endpoint.ts: the agent port (WebSocket → SSH), its limits, health and metrics;
 *   agent-admission.ts decides which agents it takes;
 * - gateway/: the cluster gateway, a pipeline of stages (see gateway/gateway.ts); cluster-ports.ts
 *   serves a cluster on ports of its own with the same gateway;
 * - known-clusters.ts: the clusters from the mode's watch; status-writer.ts: what is recorded of
 *   their agents;
 * - peers.ts, peer-api.ts: the other replicas, asked and answered.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { hostname } from 'node:os';
import { createSecureContext } from 'node:tls';
import { readFileOrExplain } from '../config/files.ts';
import { ConfigError, TowerError } from '../errors.ts';
import { cachedMetrics, type HealthOptions } from '../observe/health.ts';
import { HealthServer } from '../observe/health-server.ts';
import type { Logger } from '../observe/log.ts';
import type { Closer, Mode } from '../mode/mode.ts';
import type { CertificateAuthority } from '../pki/ca.ts';
import { loadCertificateAuthority, loadHostKey } from '../pki/keys.ts';
import { SoloReplica, type Replicas, type ReplicaTimes } from '../replicas.ts';
import type { ReplicaView } from '../tunnel/protocol.ts';
import { TunnelServer } from '../tunnel/server.ts';
import { CHANNEL_BUFFER_BYTES, CHANNEL_WINDOW_BYTES, CRYPTO_BACKEND, hostKeyFingerprint } from '../tunnel/ssh.ts';
import { StallBudget } from '../tunnel/stall-budget.ts';
import { VERSION } from '../version.ts';
import { AgentAdmission } from './agent-admission.ts';
import { AgentEndpoint } from './agent-endpoint.ts';
import { ServedPorts } from './cluster-ports.ts';
import { InflightRequests } from './gateway/admission.ts';
import { Gateway, type GatewayPolicy, type GatewayShared } from './gateway/gateway.ts';
import { ImpersonationCheck } from './identity.ts';
import { KnownClusters } from './known-clusters.ts';
import { ProxyMetrics } from './metrics.ts';
import { peerApi } from './peer-api.ts';
import { PEER_URI_PREFIX, PeerSignature } from './peer-protocol.ts';
import { Peers } from './peers.ts';
import { RevocationWatch } from './revocation-watch.ts';
import { SessionRegistry } from './registry.ts';
import { StatusWriter } from './status-writer.ts';

const GATEWAY_CERT_DAYS = 365;
const PEER_CERT_DAYS = 365;
/** a drain looks this often whether what was in flight is done */
const DRAIN_POLL_MS = 100;
export const DEFAULT_REPLICA_TIMES: ReplicaTimes = { leaseMs: 30_000, renewMs: 10_000 };
/** --max-stalled-memory: beside an idle proxy's ~90 MiB, within a 256 MiB memory limit */
export const DEFAULT_MAX_STALLED_BYTES = 64 * 2 ** 20;
/**
 * what an answer whose client stopped reading holds here at most: the SSH window the agent may
 * fill, the channel's buffer, and the TLS and HTTP buffers towards the client
 */
const STALLED_ANSWER_BYTES = CHANNEL_WINDOW_BYTES + 3 * CHANNEL_BUFFER_BYTES;
/**
 * the SSH window of channels while stalled answers hold half of --max-stalled-memory: a burst of
 * downloads admitted before any stalls then holds this much each, not 2 MiB (slower over long links)
 */
const PRESSED_WINDOW_BYTES = 256 * 1024;

/** How a replica shuts down on SIGTERM. */
export interface DrainOptions {
  /** unready but serving on, for load balancers to notice (as kube-apiserver's --shutdown-delay-duration) */
  delayMs: number;
  /** then at most this long for requests in flight, exec and port-forward sessions to end */
  graceMs: number;
}

export interface ProxyOptions {
  mode: Mode;
  host: string;
  port: number;
  gatewayPort: number;
  /** serve /livez, /readyz and /metrics on this port too, and /metrics no longer on the agent port */
  metricsPort?: number;
  publishServiceAddress: string;
  caCert?: string;
  caKey?: string;
  /** how the gateway and the cluster ports treat requests (default: as the certificate, bound certificates only) */
  gateway?: GatewayPolicy;
  /** serve TLS on the agent port: tower's CA issues the certificate, or these PEM files */
  agentTls?: boolean | { certFile: string; keyFile: string };
  /** only the holder of a Lease writes the Clusters (every replica serves either way) */
  leaderElection?: boolean;
  /** this replica's id: its Lease, the header agents read */
  serverId: string;
  /** the address other replicas reach this one's gateway at (default: --host unless a wildcard, else the host name) */
  advertiseAddress?: string;
  replicaTimes?: ReplicaTimes;
  log: Logger;
}

/** The proxy: agent endpoint, session registry and cluster gateway over one mode. */
export class Proxy {
  readonly registry = new SessionRegistry();
  readonly metrics: ProxyMetrics;
  agentPort = 0;
  gatewayPort = 0;
  metricsPort: number | undefined;
  hostKeyFingerprint = '';
  #opts: ProxyOptions;
  #log: Logger;
  #phase: 'starting' | 'serving' | 'draining' = 'starting';
  #closed = false;
  #clusters: KnownClusters;
  #status: StatusWriter;
  #admission: AgentAdmission;
  /**
   * given to every gateway of this proxy, with one cache of impersonation verdicts and one count of requests in flight
   */
  #gatewayPolicy: GatewayShared;
  #endpoint: AgentEndpoint | undefined;
  #metricsServer: HealthServer | undefined;
  #gateway: Gateway | undefined;
  /** clusters served on ports of their own (Kubernetes mode) */
  #ports: ServedPorts | undefined;
  #replicas: Replicas | undefined;
  #peers: Peers | undefined;
  /** the mode's claim: the file mode's lock (held until the very end) */
  #claim: Closer | undefined;
  /** leader election: held while this replica writes the Clusters */
  #lease: Closer | undefined;
  /** ends a campaign for the writers' Lease that is still waiting when this replica drains or closes */
  #campaign = new AbortController();
  #revocations: RevocationWatch;

  constructor(opts: ProxyOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    const stalled = new StallBudget(
      opts.gateway?.limits?.maxStalledBytes ?? DEFAULT_MAX_STALLED_BYTES,
      STALLED_ANSWER_BYTES,
    );
    this.metrics = new ProxyMetrics({
      registry: this.registry,
      clusters: () => this.#clusters.names(),
      leader: () => (opts.mode.leading === false ? 0 : 1),
      replicas: () => this.#replicas?.live().length ?? 1,
      draining: () => this.#phase === 'draining',
      stalledBytes: () => stalled.reservedBytes,
    });
    this.#clusters = new KnownClusters({
      records: opts.mode.clusters,
      registry: this.registry,
      metrics: this.metrics,
      onChange: (name, cluster) => this.#ports?.apply(name, cluster),
      log: this.#log,
    });
    this.#status = new StatusWriter({
      record: opts.mode.proxyRecord,
      registry: this.registry,
      knows: (name) => this.#clusters.has(name),
      log: this.#log,
    });
    this.#admission = new AgentAdmission({
      clusters: this.#clusters,
      registry: this.registry,
      metrics: this.metrics,
      channelWindow: () => (stalled.pressed ? PRESSED_WINDOW_BYTES : CHANNEL_WINDOW_BYTES),
      view: () => this.#view(),
      log: this.#log,
    });
    this.#revocations = new RevocationWatch(opts.mode.revocations, this.#log);
    this.#gatewayPolicy = {
      ...opts.gateway,
      revocations: this.#revocations,
      impersonation: new ImpersonationCheck(),
      inflight: new InflightRequests(),
      stalled,
      metrics: this.metrics,
      draining: () => this.#phase === 'draining',
    };
  }

  async start(): Promise<void> {
    const { mode } = this.#opts;
    // the file mode allows one proxy per data dir; with leader election every replica serves and one writes
    if (!this.#opts.leaderElection) this.#claim = await mode.claim();
    const ca = await loadCertificateAuthority(mode.keys, this.#opts.caCert, this.#opts.caKey);
    const hostKey = await loadHostKey(mode.keys);
    this.hostKeyFingerprint = hostKeyFingerprint(hostKey);

    // the names every certificate of this proxy carries: the gateway's, and each cluster port's besides its own
    const publish = this.#opts.publishServiceAddress;
    const wildcard = this.#opts.host === '0.0.0.0' || this.#opts.host === '::';
    const advertise = this.#opts.advertiseAddress ?? (wildcard ? hostname() : this.#opts.host);
    const serverNames = [publish, 'localhost', '127.0.0.1', '::1', hostname(), advertise];
    if (!wildcard) serverNames.push(this.#opts.host);

    // the agent port answers health and metrics from the start; agents only once this proxy serves
    const health = this.#health();
    if (this.#opts.metricsPort !== undefined) {
      this.#metricsServer = new HealthServer(health);
      this.metricsPort = await listenOrExplain(
        this.#metricsServer.listen(this.#opts.metricsPort, this.#opts.host),
        this.#opts.host,
        this.#opts.metricsPort,
        '--metrics-port',
      );
    }
    this.#endpoint = new AgentEndpoint({
      tunnel: new TunnelServer(hostKey),
      authorize: async (config, remote) => this.#admission.authorize(config, remote),
      onSession: (s) => this.#admission.admit(s),
      tls: await agentTls(this.#opts.agentTls, ca, serverNames),
      // with a metrics port, the agent port keeps its probes and sheds /metrics: a NetworkPolicy can then fence them
      health: this.#metricsServer ? { ...health, metrics: undefined } : health,
      serverId: this.#opts.serverId,
      refusing: () =>
        this.#phase === 'serving'
          ? undefined
          : this.#phase === 'draining'
            ? 'this proxy replica is shutting down; retry (another replica serves)'
            : 'the proxy is starting; retry',
      metrics: this.metrics,
      log: this.#log,
    });
    this.agentPort = await listenOrExplain(
      this.#endpoint.listen(this.#opts.port, this.#opts.host),
      this.#opts.host,
      this.#opts.port,
      '--port',
    );

    // the gateway's port is known before the replica announces where peers reach it
    const serving = await ca.issueServer(serverNames, GATEWAY_CERT_DAYS);
    if (this.#gatewayPolicy.identity === 'agent') {
      this.#log.warn(
        '--gateway-identity agent: every gateway user acts in the members with the full rights of their agents ' +
          "(the Go tower's behaviour); certificates' users and groups are ignored",
      );
    }
    const self = { id: this.#opts.serverId, address: '', draining: false };
    const shared = mode.replicas?.(self, this.#opts.replicaTimes ?? DEFAULT_REPLICA_TIMES, this.#log);
    const replicas = shared ?? new SoloReplica(self);
    this.#replicas = replicas;
    // only a mode that several replicas serve has peers to reach (the file mode has one proxy)
    if (shared) this.#peers = await this.#connectPeers(ca, replicas);
    this.#gatewayPolicy.peers = this.#peers;
    // before any certificate is served: a revoked one never gets a first request through
    await this.#revocations.start();
    this.#gateway = new Gateway({
      registry: this.registry,
      knows: (name) => this.#clusters.has(name),
      tls: { caPem: ca.certPem, cert: serving.cert, key: serving.key },
      ...this.#gatewayPolicy,
      peerApi: peerApi({
        serverId: this.#opts.serverId,
        draining: () => this.#phase === 'draining',
        sessions: (name) => this.registry.count(name),
        changed: (name) => {
          if (this.#clusters.has(name)) this.#status.schedule(name);
        },
      }),
      log: this.#log,
    });
    this.#ports = new ServedPorts({
      host: this.#opts.host,
      ca,
      registry: this.registry,
      log: this.#log,
      knows: (n) => this.#clusters.has(n),
      baseNames: serverNames,
      gateway: this.#gatewayPolicy,
    });
    this.gatewayPort = await listenOrExplain(
      this.#gateway.listen(this.#opts.gatewayPort, this.#opts.host),
      this.#opts.host,
      this.#opts.gatewayPort,
      '--gateway-port',
    );
    self.address = `${advertise.includes(':') ? `[${advertise}]` : advertise}:${this.gatewayPort}`;
    await replicas.start();
    replicas.onChange(() => this.#replicasChanged());

    await mode.reconcile?.({
      ca,
      agents: (name) => this.#agentsAnywhere(name),
      revoked: (facts) => this.#revocations.revokes(facts),
      onRevised: (fn) => void this.#revocations.onRevised(fn),
      onError: () => this.metrics.reconcileErrors.inc(),
    });
    await this.#clusters.start();
    this.registry.on('change', (name: string) => {
      this.#status.seen(name);
      this.#peers?.nudge(name);
    });

    const h = publish.includes(':') ? `[${publish}]` : publish;
    await mode.proxyRecord.write({
      agentUrl: `${this.#opts.agentTls ? 'https' : 'http'}://${h}:${this.agentPort}`,
      gatewayUrl: `https://${h}:${this.gatewayPort}`,
      hostKeyFingerprint: this.hostKeyFingerprint,
      pid: process.pid,
    });
    this.#phase = 'serving';
    this.#log.info('proxy serving', {
      agents: `${this.#opts.host}:${this.agentPort}`,
      gateway: `${this.#opts.host}:${this.gatewayPort}`,
      ...(this.metricsPort !== undefined ? { metrics: `${this.#opts.host}:${this.metricsPort}` } : {}),
      store: mode.clusters.location,
      clusters: this.#clusters.size,
      serverId: this.#opts.serverId,
      replicas: replicas.live().length,
      hostKey: this.hostKeyFingerprint,
      crypto: CRYPTO_BACKEND,
    });
    if (this.#opts.leaderElection) this.#electLeader();
  }

  /** The other replicas, reached with a certificate of this replica's own and a key only replicas hold. */
  async #connectPeers(ca: CertificateAuthority, replicas: Replicas): Promise<Peers> {
    const id = this.#opts.serverId;
    const cert = await ca.issueClient(`tower-replica:${id}`, [], PEER_CERT_DAYS, undefined, [PEER_URI_PREFIX + id]);
    return new Peers({
      replicas,
      tls: { cert: cert.cert, key: cert.key, caPem: ca.certPem },
      signature: new PeerSignature(ca.secret('peer-request-signature')),
      log: this.#log,
    });
  }

  /** Every replica serves; the one holding the lease also writes the Clusters. */
  #electLeader(): void {
    void this.#opts.mode.claim(this.#campaign.signal).then(
      (claim) => {
        if (this.#phase === 'draining' || this.#closed) {
          void claim.close();
          return;
        }
        this.#lease = claim;
      },
      (err: Error) =>
        this.#log.error('leader election failed: this replica serves, and does not write the Clusters', {
          err: err.message,
        }),
    );
  }

  /** Agents of a cluster here, or else on the other replicas (for AgentAvailable: true while any replica holds one). */
  async #agentsAnywhere(name: string): Promise<number> {
    const here = this.registry.count(name);
    if (here > 0 || !this.#peers) return here;
    return this.#peers.sessionsElsewhere(name);
  }

  /** What agents are told: this replica, the live ones (draining ones left out), and whether this one drains. */
  #view(): ReplicaView {
    const live = this.#replicas?.live() ?? [];
    return {
      server: this.#opts.serverId,
      servers: live.filter((r) => !r.draining).map((r) => r.id),
      draining: this.#phase === 'draining',
    };
  }

  #replicasChanged(): void {
    const view = this.#view();
    for (const s of this.registry.sessions()) s.tell(view);
    // a replica that went may have held a cluster's only agent
    for (const name of this.#clusters.names()) if (this.registry.count(name) === 0) this.#status.schedule(name);
  }

  /**
   * SIGTERM: unready at once (load balancers stop sending), agents told this replica drains, then
   * after `delayMs` no new connections, requests in flight finished (watches handed back at an
   * event boundary) within `graceMs`, the lease and this replica's record withdrawn. close() ends the rest.
   */
  async drain(opts: DrainOptions): Promise<void> {
    if (this.#phase !== 'serving') return;
    this.#phase = 'draining';
    // a draining replica no longer campaigns to write (it would only hand the Lease back)
    this.#campaign.abort();
    const started = Date.now();
    this.#log.info('draining', { delay: `${opts.delayMs / 1000}s`, grace: `${opts.graceMs / 1000}s` });
    // its own agents first: told by another replica that this one left, they would close its sessions now
    const view = this.#view();
    for (const s of this.registry.sessions()) s.tell(view);
    await this.#replicas?.drain().catch(() => undefined);
    await sleep(opts.delayMs);
    const gateways = [this.#gateway, ...(this.#ports?.gateways ?? [])].filter((g) => g !== undefined);
    this.#endpoint?.stopAccepting();
    for (const g of gateways) g.stopAccepting();
    const watches = gateways.reduce((n, g) => n + g.handBackWatches(), 0);
    const busy = () => gateways.reduce((n, g) => n + g.busy, 0);
    while (busy() > 0 && Date.now() - started < opts.delayMs + opts.graceMs) await sleep(DRAIN_POLL_MS);
    this.#log.info('drained', {
      watchesHandedBack: watches,
      cutShort: busy(),
      after: `${((Date.now() - started) / 1000).toFixed(1)}s`,
    });
    // the last replica says, on its way out, that no proxy serves its clusters any more
    const others = this.#replicas?.live().filter((r) => r.id !== this.#replicas?.self.id && !r.draining) ?? [];
    if (others.length === 0) await this.#opts.mode.withdraw?.();
    // the next writer takes over before this replica's agents go
    await this.#lease?.close();
    this.#lease = undefined;
  }

  /**
   * Live while the event loop turns; ready once it serves (listeners up, the mode's clusters
   * loaded and watched, the other replicas known) until it drains. Every replica is ready, leader
   * or not: each serves agents, the gateway and the cluster ports.
   */
  #health(): HealthOptions {
    const location = this.#opts.mode.clusters.location;
    return {
      live: [{ name: 'ping', check: () => undefined }],
      ready: [
        { name: 'ping', check: () => undefined },
        { name: 'shutdown', check: () => (this.#phase === 'draining' ? 'this replica is shutting down' : undefined) },
        {
          name: 'store',
          check: () => (this.#clusters.ready ? undefined : `the clusters of ${location} are not loaded yet`),
        },
        {
          name: 'listeners',
          check: () => (this.#phase === 'starting' ? 'the gateway does not listen yet' : undefined),
        },
      ],
      metrics: cachedMetrics(async () => ({
        contentType: this.metrics.contentType,
        body: await this.metrics.metrics(),
      })),
      extra: { '/health': () => 'OK\n', '/version': () => VERSION + '\n' },
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#campaign.abort();
    await this.#lease?.close();
    this.#lease = undefined;
    this.#clusters.close();
    this.#revocations.close();
    this.#peers?.close();
    this.registry.closeAll();
    await this.#replicas?.close();
    await Promise.all([
      this.#endpoint?.close(),
      this.#gateway?.close(),
      this.#ports?.close(),
      this.#metricsServer?.close(),
    ]);
    this.#status.stop();
    // only the proxy that held the file mode writes its final status (the Kubernetes mode's writer reads agents live)
    if (this.#claim) await Promise.all([...this.#clusters.names()].map((name) => this.#status.write(name)));
    await this.#claim?.close();
    this.#opts.mode.close();
  }
}

/** The agent port's certificate: none (plain HTTP), one from tower's CA, or the files given. */
async function agentTls(
  t: ProxyOptions['agentTls'],
  ca: CertificateAuthority,
  serverNames: string[],
): Promise<{ cert: string; key: string } | undefined> {
  if (!t) return undefined;
  if (t === true) return ca.issueServer(serverNames, GATEWAY_CERT_DAYS);
  const pair = {
    cert: readFileOrExplain(t.certFile, '--agent-tls-cert').toString('utf8'),
    key: readFileOrExplain(t.keyFile, '--agent-tls-key').toString('utf8'),
  };
  try {
    createSecureContext(pair);
  } catch (err) {
    throw new ConfigError(
      `--agent-tls-cert ${t.certFile} and --agent-tls-key ${t.keyFile} are not a PEM certificate and its key: ` +
        (err as Error).message,
    );
  }
  return pair;
}

async function listenOrExplain(p: Promise<number>, host: string, port: number, flag: string): Promise<number> {
  try {
    return await p;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE')
      throw new TowerError(
        'EADDRINUSE',
        `${host}:${port} is already in use (another proxy running? choose another ${flag})`,
      );
    if (code === 'EACCES')
      throw new TowerError(
        'EACCES',
        `no permission to listen on ${host}:${port} (choose a port above 1023 with ${flag})`,
      );
    throw err;
  }
}
