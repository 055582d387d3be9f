import { timingSafeEqual } from 'node:crypto';
import { hostname } from 'node:os';
import { createSecureContext } from 'node:tls';
import { readFileOrExplain } from '../config/files.ts';
import { ConfigError, TowerError } from '../errors.ts';
import type { Logger } from '../observe/log.ts';
import type { CertificateAuthority } from '../pki/ca.ts';
import { loadCertificateAuthority, loadHostKey } from '../pki/keys.ts';
import { clusterNameProblem } from '../store/names.ts';
import type { Cluster, ClusterStore, Closer } from '../store/types.ts';
import { FEATURE_TLS_AT_AGENT, UNAUTHORIZED, type AgentConfig } from '../tunnel/protocol.ts';
import { CRYPTO_BACKEND, hostKeyFingerprint } from '../tunnel/ssh.ts';
import { TunnelServer, type AgentSession } from '../tunnel/server.ts';
import { AgentEndpoint } from './agent-endpoint.ts';
import { ClusterPorts } from './cluster-ports.ts';
import { Gateway, InflightRequests, type GatewayPolicy, type GatewayShared } from './gateway.ts';
import { ProxyMetrics } from './metrics.ts';
import { cachedMetrics, type HealthOptions } from '../observe/health.ts';
import { VERSION } from '../version.ts';
import { ImpersonationCheck } from './identity.ts';
import { SessionRegistry } from './registry.ts';

const STATUS_WRITE_DELAY_MS = 200;
const GATEWAY_CERT_DAYS = 365;

export interface ProxyOptions {
  store: ClusterStore;
  host: string;
  port: number;
  gatewayPort: number;
  publishServiceAddress: string;
  caCert?: string;
  caKey?: string;
  /** how the gateway and the cluster ports treat requests (default: as the certificate, bound certificates only, default limits) */
  gateway?: GatewayPolicy;
  /** serve TLS on the agent port: tower's CA issues the certificate, or these PEM files */
  agentTls?: boolean | { certFile: string; keyFile: string };
  /** the store's claim waits for a Lease: stand by, live but not ready, meanwhile */
  leaderElection?: boolean;
  log: Logger;
}


/** The proxy: agent endpoint, session registry and cluster gateway over one store. */
export class Proxy {
  readonly registry = new SessionRegistry();
  agentPort = 0;
  gatewayPort = 0;
  hostKeyFingerprint = '';
  #opts: ProxyOptions;
  #log: Logger;
  #clusters = new Map<string, Cluster>();
  #watch: Closer | undefined;
  #endpoint: AgentEndpoint | undefined;
  #gateway: Gateway | undefined;
  #statusTimers = new Map<string, NodeJS.Timeout>();
  #claim: Closer | undefined;
  #ca: CertificateAuthority | undefined;
  #serverNames: string[] = [];
  /** clusters served on ports of their own (Kubernetes mode) */
  #ports = new Map<string, ClusterPorts>();
  /** given to every gateway of this proxy, with one cache of impersonation verdicts and one count of requests in flight */
  #gatewayPolicy: GatewayShared;
  #phase: 'starting' | 'standby' | 'serving' = 'starting';
  /** when each cluster's agents were last seen by this proxy */
  #lastSeen = new Map<string, string>();
  readonly metrics: ProxyMetrics;

  constructor(opts: ProxyOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.metrics = new ProxyMetrics({ registry: this.registry, leader: () => (this.#phase === 'standby' ? 0 : 1) });
    this.#gatewayPolicy = { ...opts.gateway, impersonation: new ImpersonationCheck(), inflight: new InflightRequests(), metrics: this.metrics };
  }

  async start(): Promise<void> {
    const { store } = this.#opts;
    // without an election the claim answers at once (and names a proxy that already serves the store)
    if (!this.#opts.leaderElection) this.#claim = await store.claim();
    const ca = await loadCertificateAuthority(store, this.#opts.caCert, this.#opts.caKey);
    this.#ca = ca;
    const hostKey = await loadHostKey(store);
    this.hostKeyFingerprint = hostKeyFingerprint(hostKey);

    // the names every certificate of this proxy carries: the gateway's, and each cluster port's besides its own
    const publish = this.#opts.publishServiceAddress;
    this.#serverNames = [publish, 'localhost', '127.0.0.1', '::1', hostname()];
    if (this.#opts.host !== '0.0.0.0' && this.#opts.host !== '::') this.#serverNames.push(this.#opts.host);

    // the agent port answers health and metrics from the start; agents only once this proxy serves
    this.#endpoint = new AgentEndpoint({
      tunnel: new TunnelServer(hostKey),
      authorize: (config, remote) => this.#authorize(config, remote),
      onSession: (s) => this.#admit(s),
      tls: await this.#agentTls(ca),
      health: this.#health(),
      refusing: () => (this.#phase === 'serving' ? undefined : this.#phase === 'standby'
        ? 'this proxy replica is standing by (leader election): another one serves agents; retry'
        : 'the proxy is starting; retry'),
      metrics: this.metrics,
      log: this.#log,
    });
    // a replica standing by shares the port with the leader only where both run in one network
    // namespace (not in pods): it then listens once it leads
    const listenAgents = () => listenOrExplain(this.#endpoint!.listen(this.#opts.port, this.#opts.host), this.#opts.host, this.#opts.port, '--port');
    let listening = true;
    try {
      this.agentPort = await listenAgents();
    } catch (err) {
      if (!(this.#opts.leaderElection && err instanceof TowerError && err.code === 'EADDRINUSE')) throw err;
      listening = false;
      this.#log.info('the agent port is in use (another replica on this host?): health answers once this replica leads', { port: this.#opts.port });
    }

    if (this.#opts.leaderElection) {
      this.#phase = 'standby';
      this.#claim = await store.claim();
      this.#phase = 'starting';
    }
    if (!listening) this.agentPort = await retryWhileInUse(listenAgents);
    await store.reconcile?.({ ca, agents: (name) => this.registry.count(name), onError: () => this.metrics.reconcileErrors.inc() });
    await this.#watchClusters();
    this.registry.on('change', (name: string) => {
      // an agent came or went: either way it was seen now
      this.#lastSeen.set(name, new Date().toISOString());
      this.#scheduleStatus(name);
    });

    const serving = await ca.issueServer(this.#serverNames, GATEWAY_CERT_DAYS);

    if (this.#gatewayPolicy.identity === 'agent') {
      this.#log.warn('--gateway-identity agent: every gateway user acts in the members with the full rights of their agents (the Go tower\'s behaviour); certificates\' users and groups are ignored');
    }
    this.#gateway = new Gateway({
      registry: this.registry,
      knows: (name) => this.#clusters.has(name),
      tls: { caPem: ca.certPem, cert: serving.cert, key: serving.key },
      ...this.#gatewayPolicy,
      log: this.#log,
    });
    this.gatewayPort = await listenOrExplain(this.#gateway.listen(this.#opts.gatewayPort, this.#opts.host), this.#opts.host, this.#opts.gatewayPort, '--gateway-port');

    const h = publish.includes(':') ? `[${publish}]` : publish;
    await store.writeProxyRecord({
      agentUrl: `${this.#opts.agentTls ? 'https' : 'http'}://${h}:${this.agentPort}`,
      gatewayUrl: `https://${h}:${this.gatewayPort}`,
      hostKeyFingerprint: this.hostKeyFingerprint,
      pid: process.pid,
    });
    this.#phase = 'serving';
    this.#log.info('proxy serving', {
      agents: `${this.#opts.host}:${this.agentPort}`,
      gateway: `${this.#opts.host}:${this.gatewayPort}`,
      store: store.location,
      clusters: this.#clusters.size,
      hostKey: this.hostKeyFingerprint,
      crypto: CRYPTO_BACKEND,
    });
  }

  /**
   * Live while the event loop turns; ready once it serves: listeners up, the store's clusters
   * loaded and watched, and (with leader election) the lease held. A standing-by replica is live
   * but not ready, so that a Service sends agents and users only to the one that serves.
   */
  #health(): HealthOptions {
    return {
      live: [{ name: 'ping', check: () => undefined }],
      ready: [
        { name: 'ping', check: () => undefined },
        { name: 'leader-election', check: () => (this.#phase === 'standby' ? 'standing by: another replica holds Lease kubesphere-system/tower' : undefined) },
        { name: 'store', check: () => (this.#watch ? undefined : `the clusters of ${this.#opts.store.location} are not loaded yet`) },
        { name: 'listeners', check: () => (this.#phase === 'serving' ? undefined : 'the gateway does not listen yet') },
      ],
      metrics: cachedMetrics(async () => ({ contentType: this.metrics.contentType, body: await this.metrics.metrics() })),
      extra: { '/health': () => 'OK\n', '/version': () => VERSION + '\n' },
    };
  }

  async #agentTls(ca: CertificateAuthority): Promise<{ cert: string; key: string } | undefined> {
    const t = this.#opts.agentTls;
    if (!t) return undefined;
    if (t === true) return ca.issueServer(this.#serverNames, GATEWAY_CERT_DAYS);
    const pair = { cert: readFileOrExplain(t.certFile, '--agent-tls-cert').toString('utf8'), key: readFileOrExplain(t.keyFile, '--agent-tls-key').toString('utf8') };
    try {
      createSecureContext(pair);
    } catch (err) {
      throw new ConfigError(`--agent-tls-cert ${t.certFile} and --agent-tls-key ${t.keyFile} are not a PEM certificate and its key: ${(err as Error).message}`);
    }
    return pair;
  }

  async close(): Promise<void> {
    this.#watch?.close();
    this.registry.closeAll();
    await Promise.all([this.#endpoint?.close(), this.#gateway?.close(), ...[...this.#ports.values()].map((p) => p.close())]);
    for (const t of this.#statusTimers.values()) clearTimeout(t);
    // only the proxy that held the store writes its final status
    if (this.#claim) await Promise.all([...this.#clusters.keys()].map((name) => this.#writeStatus(name)));
    await this.#claim?.close();
    this.#opts.store.close();
  }

  /** Keeps the known clusters; a rotated token or a removed cluster drops the sessions that no longer qualify. */
  async #watchClusters(): Promise<void> {
    for (const c of await this.#opts.store.list()) {
      this.#clusters.set(c.name, c);
      if (c.problem) this.#reportUnusable(c);
    }
    this.#watch = this.#opts.store.watch((ev) => {
      if (ev.type === 'deleted') {
        this.#clusters.delete(ev.name);
        this.#servePorts(ev.name, undefined);
        const n = this.registry.close(ev.name);
        void this.metrics.forget(ev.name);
        this.#log.info('cluster removed from the store', { cluster: ev.name, sessionsClosed: n });
        return;
      }
      const before = this.#clusters.get(ev.cluster.name);
      this.#clusters.set(ev.cluster.name, ev.cluster);
      this.#servePorts(ev.cluster.name, ev.cluster);
      if (ev.cluster.problem) {
        // fail closed: the token this proxy knew is no longer trusted
        if (before?.problem !== ev.cluster.problem) this.#reportUnusable(ev.cluster, this.registry.close(ev.cluster.name));
        return;
      }
      if (!before) { this.#log.info('cluster registered', { cluster: ev.cluster.name }); return; }
      if (before.problem) this.#log.info('cluster record usable again', { cluster: ev.cluster.name });
      if (before.token !== ev.cluster.token) {
        const n = this.registry.close(ev.cluster.name, (s) => !tokensEqual(s.config.token, ev.cluster.token));
        this.#log.info('cluster token rotated', { cluster: ev.cluster.name, sessionsClosed: n });
      }
    });
  }

  #reportUnusable(cluster: Cluster, sessionsClosed = 0): void {
    this.#log.error('cluster record unusable: its agents are refused', {
      cluster: cluster.name, why: cluster.problem, sessionsClosed,
      fix: `restore the record, or write a new token with: tower token ${cluster.name} --rotate`,
    });
  }

  #servePorts(name: string, cluster: Cluster | undefined): void {
    let ports = this.#ports.get(name);
    if (!cluster?.serve) {
      if (ports) {
        this.#ports.delete(name);
        void ports.close();
      }
      return;
    }
    if (!ports) {
      ports = new ClusterPorts({
        name, host: this.#opts.host, ca: this.#ca!, registry: this.registry, log: this.#log,
        knows: (n) => this.#clusters.has(n),
        baseNames: this.#serverNames,
        gateway: this.#gatewayPolicy,
      });
      this.#ports.set(name, ports);
    }
    void ports.apply(cluster.serve);
  }

  async #authorize(config: AgentConfig, remote: string): Promise<string | undefined> {
    const problem = clusterNameProblem(config.name);
    const cluster = problem ? undefined : this.#clusters.get(config.name);
    if (!cluster) {
      this.#log.warn('agent refused: unknown cluster', { cluster: config.name, remote, fix: problem ?? `register it with: tower token ${config.name}` });
      this.metrics.loginFailures.inc({ reason: 'unknown_cluster' });
      return UNAUTHORIZED;
    }
    if (cluster.problem) {
      this.#log.warn('agent refused: the cluster record is unusable', { cluster: config.name, remote, fix: `tower token ${config.name} --rotate` });
      this.metrics.loginFailures.inc({ reason: 'unusable_record' });
      return UNAUTHORIZED;
    }
    if (!tokensEqual(config.token, cluster.token)) {
      this.#log.warn('agent refused: wrong token', { cluster: config.name, remote, fix: `print the current token with: tower token ${config.name}` });
      this.metrics.loginFailures.inc({ reason: 'wrong_token' });
      return UNAUTHORIZED;
    }
    return undefined;
  }

  #admit(session: AgentSession): void {
    const cluster = this.#clusters.get(session.name);
    // the token may have rotated, or the cluster gone, while the handshake ran
    if (!cluster || cluster.problem || !tokensEqual(session.config.token, cluster.token)) { session.close(); return; }
    this.registry.add(session);
    const tlsAtAgent = session.config.features?.includes(FEATURE_TLS_AT_AGENT) ?? false;
    this.#log.info('agent connected', {
      cluster: session.name, remote: session.remote, session: session.id, agents: this.registry.count(session.name),
      version: session.config.version || undefined, upstream: session.config.kubernetesSvcHost,
      auth: session.config.bearerToken?.length ? 'bearer token' : session.config.certData?.length ? 'client certificate' : tlsAtAgent ? 'kept by the agent' : 'none',
      upstreamTls: tlsAtAgent ? 'agent' : 'proxy',
    });
    session.once('close', () => this.metrics.sessionClosed(session));
    session.once('close', () => this.#log.info('agent disconnected', { cluster: session.name, session: session.id, agents: this.registry.count(session.name) }));
  }

  #scheduleStatus(name: string): void {
    if (this.#statusTimers.has(name)) return;
    this.#statusTimers.set(name, setTimeout(() => {
      this.#statusTimers.delete(name);
      void this.#writeStatus(name);
    }, STATUS_WRITE_DELAY_MS));
  }

  async #writeStatus(name: string): Promise<void> {
    if (!this.#clusters.has(name)) return;
    const sessions = this.registry.of(name);
    const list = (f: (s: AgentSession) => string) => [...new Set(sessions.map(f))].join(',') || undefined;
    const since = sessions.length ? new Date(Math.min(...sessions.map((s) => s.connectedAt.getTime()))).toISOString() : undefined;
    try {
      await this.#opts.store.writeStatus(name, {
        connected: sessions.length > 0, agents: sessions.length, since, lastSeen: sessions.length ? new Date().toISOString() : this.#lastSeen.get(name),
        agentVersions: list((s) => s.config.version || 'unknown'), agentAddresses: list((s) => s.remote),
      });
    } catch (err) {
      this.#log.warn('cannot write cluster status', { cluster: name, err: (err as Error).message });
    }
  }
}

export function tokensEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  // compare equal lengths only, so that the time does not tell where they differ
  if (x.length !== y.length) { timingSafeEqual(y, y); return false; }
  return timingSafeEqual(x, y);
}

/** the previous leader may still hold the port for a moment after the lease changed hands */
async function retryWhileInUse(listen: () => Promise<number>): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await listen();
    } catch (err) {
      if (!(err instanceof TowerError && err.code === 'EADDRINUSE') || attempt >= 60) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

async function listenOrExplain(p: Promise<number>, host: string, port: number, flag: string): Promise<number> {
  try {
    return await p;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new TowerError('EADDRINUSE', `${host}:${port} is already in use (another proxy running? choose another ${flag})`);
    if (code === 'EACCES') throw new TowerError('EACCES', `no permission to listen on ${host}:${port} (choose a port above 1023 with ${flag})`);
    throw err;
  }
}
