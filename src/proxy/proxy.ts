import { setTimeout as sleep } from 'node:timers/promises';
import { timingSafeEqual } from 'node:crypto';
import { hostname } from 'node:os';
import { createSecureContext } from 'node:tls';
import { readFileOrExplain } from '../config/files.ts';
import { ConfigError, TowerError } from '../errors.ts';
import type { Logger } from '../observe/log.ts';
import type { CertificateAuthority } from '../pki/ca.ts';
import { loadCertificateAuthority, loadHostKey } from '../pki/keys.ts';
import { clusterNameProblem } from '../store/names.ts';
import type { Cluster, ClusterStore, Closer, ReplicaTimes } from '../store/types.ts';
import { FEATURE_TLS_AT_AGENT, UNAUTHORIZED, type AgentConfig } from '../tunnel/protocol.ts';
import { CHANNEL_BUFFER_BYTES, CHANNEL_WINDOW_BYTES, CRYPTO_BACKEND, hostKeyFingerprint } from '../tunnel/ssh.ts';
import { StallBudget } from '../tunnel/stall-budget.ts';
import { TunnelServer, type AgentSession } from '../tunnel/server.ts';
import { AgentEndpoint } from './agent-endpoint.ts';
import { ClusterPorts } from './cluster-ports.ts';
import { Gateway, InflightRequests, type GatewayPolicy, type GatewayShared } from './gateway.ts';
import { ProxyMetrics } from './metrics.ts';
import { cachedMetrics, type HealthOptions } from '../observe/health.ts';
import { VERSION } from '../version.ts';
import { ImpersonationCheck } from './identity.ts';
import { PEER_API, PEER_URI_PREFIX, Peers, PeerSignature } from './peers.ts';
import { SoloReplica, type Replicas } from './replicas.ts';
import { SessionRegistry } from './registry.ts';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ReplicaView } from '../tunnel/protocol.ts';

const STATUS_WRITE_DELAY_MS = 200;
const GATEWAY_CERT_DAYS = 365;
const PEER_CERT_DAYS = 365;
const MAX_PEER_BODY_BYTES = 256 * 1024;
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
  /** only the holder of a Lease writes the Clusters (every replica serves either way) */
  leaderElection?: boolean;
  /** this replica's id: its Lease, the header agents read */
  serverId: string;
  /** the address other replicas reach this one's gateway at (default: --host unless it is a wildcard, else the host name) */
  advertiseAddress?: string;
  replicaTimes?: ReplicaTimes;
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
  /** the store's claim: the file store's lock (held until the very end) */
  #claim: Closer | undefined;
  /** leader election: held while this replica writes the Clusters */
  #lease: Closer | undefined;
  #closed = false;
  #ca: CertificateAuthority | undefined;
  #serverNames: string[] = [];
  /** clusters served on ports of their own (Kubernetes mode) */
  #ports = new Map<string, ClusterPorts>();
  /** given to every gateway of this proxy, with one cache of impersonation verdicts and one count of requests in flight */
  #gatewayPolicy: GatewayShared;
  #phase: 'starting' | 'serving' | 'draining' = 'starting';
  #replicas: Replicas | undefined;
  #peers: Peers | undefined;
  /** when each cluster's agents were last seen by this proxy */
  #lastSeen = new Map<string, string>();
  readonly metrics: ProxyMetrics;
  /** what answers whose clients stopped reading hold, shared by every gateway */
  #stalled: StallBudget;

  constructor(opts: ProxyOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    const stalled = new StallBudget(
      opts.gateway?.limits?.maxStalledBytes ?? DEFAULT_MAX_STALLED_BYTES,
      STALLED_ANSWER_BYTES,
    );
    this.#stalled = stalled;
    this.metrics = new ProxyMetrics({
      registry: this.registry,
      leader: () => (opts.store.leading === false ? 0 : 1),
      replicas: () => this.#replicas?.live().length ?? 1,
      draining: () => this.#phase === 'draining',
      stalledBytes: () => stalled.reservedBytes,
    });
    this.#gatewayPolicy = {
      ...opts.gateway,
      impersonation: new ImpersonationCheck(),
      inflight: new InflightRequests(),
      stalled,
      metrics: this.metrics,
      draining: () => this.#phase === 'draining',
    };
  }

  async start(): Promise<void> {
    const { store } = this.#opts;
    // the file store allows one proxy per data dir; with leader election every replica serves and one writes
    if (!this.#opts.leaderElection) this.#claim = await store.claim();
    const ca = await loadCertificateAuthority(store, this.#opts.caCert, this.#opts.caKey);
    this.#ca = ca;
    const hostKey = await loadHostKey(store);
    this.hostKeyFingerprint = hostKeyFingerprint(hostKey);

    // the names every certificate of this proxy carries: the gateway's, and each cluster port's besides its own
    const publish = this.#opts.publishServiceAddress;
    const wildcard = this.#opts.host === '0.0.0.0' || this.#opts.host === '::';
    const advertise = this.#opts.advertiseAddress ?? (wildcard ? hostname() : this.#opts.host);
    this.#serverNames = [publish, 'localhost', '127.0.0.1', '::1', hostname(), advertise];
    if (!wildcard) this.#serverNames.push(this.#opts.host);

    // the agent port answers health and metrics from the start; agents only once this proxy serves
    this.#endpoint = new AgentEndpoint({
      tunnel: new TunnelServer(hostKey),
      authorize: (config, remote) => this.#authorize(config, remote),
      onSession: (s) => this.#admit(s),
      tls: await this.#agentTls(ca),
      health: this.#health(),
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
    const serving = await ca.issueServer(this.#serverNames, GATEWAY_CERT_DAYS);
    if (this.#gatewayPolicy.identity === 'agent') {
      this.#log.warn(
        "--gateway-identity agent: every gateway user acts in the members with the full rights of their agents (the Go tower's behaviour); certificates' users and groups are ignored",
      );
    }
    const self = { id: this.#opts.serverId, address: '', draining: false };
    const shared = store.replicas?.(self, this.#opts.replicaTimes ?? DEFAULT_REPLICA_TIMES, this.#log);
    const replicas = shared ?? new SoloReplica(self);
    this.#replicas = replicas;
    // only a store that several replicas serve has peers to reach (the file store has one proxy)
    if (shared) {
      const peerCert = await ca.issueClient(`tower-replica:${this.#opts.serverId}`, [], PEER_CERT_DAYS, undefined, [
        PEER_URI_PREFIX + this.#opts.serverId,
      ]);
      const signature = new PeerSignature(ca.secret('peer-request-signature'));
      this.#peers = new Peers({
        replicas,
        tls: { cert: peerCert.cert, key: peerCert.key, caPem: ca.certPem },
        signature,
        log: this.#log,
      });
      this.#gatewayPolicy.peers = this.#peers;
    }
    this.#gateway = new Gateway({
      registry: this.registry,
      knows: (name) => this.#clusters.has(name),
      tls: { caPem: ca.certPem, cert: serving.cert, key: serving.key },
      ...this.#gatewayPolicy,
      peerApi: (req, res) => this.#onPeerApi(req, res),
      log: this.#log,
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

    await store.reconcile?.({
      ca,
      agents: (name) => this.#agentsAnywhere(name),
      onError: () => this.metrics.reconcileErrors.inc(),
    });
    await this.#watchClusters();
    this.registry.on('change', (name: string) => {
      // an agent came or went: either way it was seen now
      this.#lastSeen.set(name, new Date().toISOString());
      this.#scheduleStatus(name);
      this.#peers?.nudge(name);
    });

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
      serverId: this.#opts.serverId,
      replicas: replicas.live().length,
      hostKey: this.hostKeyFingerprint,
      crypto: CRYPTO_BACKEND,
    });
    if (this.#opts.leaderElection) {
      // every replica serves; the one holding the lease also writes the Clusters
      void store.claim().then(
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
    for (const name of this.#clusters.keys()) if (this.registry.count(name) === 0) this.#scheduleStatus(name);
  }

  /** GET /peer/v1/sessions?cluster=…: how many agents of each this replica holds; POST /peer/v1/changed: another one's agents changed. */
  #onPeerApi(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'https://peer');
    const json = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'GET' && url.pathname === `${PEER_API}sessions`) {
      const sessions: Record<string, number> = {};
      for (const name of url.searchParams.getAll('cluster').slice(0, 1000)) sessions[name] = this.registry.count(name);
      json(200, { server: this.#opts.serverId, draining: this.#phase === 'draining', sessions });
      return;
    }
    if (req.method === 'POST' && url.pathname === `${PEER_API}changed`) {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (d: string) => {
        body += d;
        if (body.length > MAX_PEER_BODY_BYTES) req.destroy();
      });
      req.on('end', () => {
        let names: unknown;
        try {
          names = (JSON.parse(body) as { clusters?: unknown }).clusters;
        } catch {
          names = undefined;
        }
        if (!Array.isArray(names)) {
          json(400, { error: 'want {"clusters": [names]}' });
          return;
        }
        for (const n of names) if (typeof n === 'string' && this.#clusters.has(n)) this.#scheduleStatus(n);
        res.writeHead(204).end();
      });
      return;
    }
    json(404, { error: `no ${req.method} ${url.pathname}` });
  }

  /**
   * SIGTERM: unready at once (load balancers stop sending), agents told this replica drains, then
   * after `delayMs` no new connections, requests in flight finished (watches handed back at an
   * event boundary) within `graceMs`, the lease and this replica's record withdrawn. close() ends the rest.
   */
  async drain(opts: DrainOptions): Promise<void> {
    if (this.#phase !== 'serving') return;
    this.#phase = 'draining';
    const started = Date.now();
    this.#log.info('draining', { delay: `${opts.delayMs / 1000}s`, grace: `${opts.graceMs / 1000}s` });
    // its own agents first: told by another replica that this one left, they would close its sessions now
    const view = this.#view();
    for (const s of this.registry.sessions()) s.tell(view);
    await this.#replicas?.drain().catch(() => undefined);
    await sleep(opts.delayMs);
    const gateways = [this.#gateway, ...[...this.#ports.values()].flatMap((p) => p.gateways)].filter(
      (g) => g !== undefined,
    );
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
    // the next writer takes over before this replica's agents go
    await this.#lease?.close();
    this.#lease = undefined;
  }

  /**
   * Live while the event loop turns; ready once it serves (listeners up, the store's clusters
   * loaded and watched, the other replicas known) until it drains. Every replica is ready, leader
   * or not: each serves agents, the gateway and the cluster ports.
   */
  #health(): HealthOptions {
    return {
      live: [{ name: 'ping', check: () => undefined }],
      ready: [
        { name: 'ping', check: () => undefined },
        { name: 'shutdown', check: () => (this.#phase === 'draining' ? 'this replica is shutting down' : undefined) },
        {
          name: 'store',
          check: () => (this.#watch ? undefined : `the clusters of ${this.#opts.store.location} are not loaded yet`),
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

  async #agentTls(ca: CertificateAuthority): Promise<{ cert: string; key: string } | undefined> {
    const t = this.#opts.agentTls;
    if (!t) return undefined;
    if (t === true) return ca.issueServer(this.#serverNames, GATEWAY_CERT_DAYS);
    const pair = {
      cert: readFileOrExplain(t.certFile, '--agent-tls-cert').toString('utf8'),
      key: readFileOrExplain(t.keyFile, '--agent-tls-key').toString('utf8'),
    };
    try {
      createSecureContext(pair);
    } catch (err) {
      throw new ConfigError(
        `--agent-tls-cert ${t.certFile} and --agent-tls-key ${t.keyFile} are not a PEM certificate and its key: ${(err as Error).message}`,
      );
    }
    return pair;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#lease?.close();
    this.#lease = undefined;
    this.#watch?.close();
    this.#peers?.close();
    this.registry.closeAll();
    await this.#replicas?.close();
    await Promise.all([
      this.#endpoint?.close(),
      this.#gateway?.close(),
      ...[...this.#ports.values()].map((p) => p.close()),
    ]);
    for (const t of this.#statusTimers.values()) clearTimeout(t);
    // only the proxy that held the file store writes its final status (the Kubernetes store's writer reads agents live)
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
        if (before?.problem !== ev.cluster.problem)
          this.#reportUnusable(ev.cluster, this.registry.close(ev.cluster.name));
        return;
      }
      if (!before) {
        this.#log.info('cluster registered', { cluster: ev.cluster.name });
        return;
      }
      if (before.problem) this.#log.info('cluster record usable again', { cluster: ev.cluster.name });
      if (before.token !== ev.cluster.token) {
        const n = this.registry.close(ev.cluster.name, (s) => !tokensEqual(s.config.token, ev.cluster.token));
        this.#log.info('cluster token rotated', { cluster: ev.cluster.name, sessionsClosed: n });
      }
    });
  }

  #reportUnusable(cluster: Cluster, sessionsClosed = 0): void {
    this.#log.error('cluster record unusable: its agents are refused', {
      cluster: cluster.name,
      why: cluster.problem,
      sessionsClosed,
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
        name,
        host: this.#opts.host,
        ca: this.#ca!,
        registry: this.registry,
        log: this.#log,
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
      this.#log.warn('agent refused: unknown cluster', {
        cluster: config.name,
        remote,
        fix: problem ?? `register it with: tower token ${config.name}`,
      });
      this.metrics.loginFailures.inc({ reason: 'unknown_cluster' });
      return UNAUTHORIZED;
    }
    if (cluster.problem) {
      this.#log.warn('agent refused: the cluster record is unusable', {
        cluster: config.name,
        remote,
        fix: `tower token ${config.name} --rotate`,
      });
      this.metrics.loginFailures.inc({ reason: 'unusable_record' });
      return UNAUTHORIZED;
    }
    if (!tokensEqual(config.token, cluster.token)) {
      this.#log.warn('agent refused: wrong token', {
        cluster: config.name,
        remote,
        fix: `print the current token with: tower token ${config.name}`,
      });
      this.metrics.loginFailures.inc({ reason: 'wrong_token' });
      return UNAUTHORIZED;
    }
    return undefined;
  }

  #admit(session: AgentSession): void {
    const cluster = this.#clusters.get(session.name);
    // the token may have rotated, or the cluster gone, while the handshake ran
    if (!cluster || cluster.problem || !tokensEqual(session.config.token, cluster.token)) {
      session.close();
      return;
    }
    this.registry.add(session);
    session.setChannelWindow(() => (this.#stalled.pressed ? PRESSED_WINDOW_BYTES : CHANNEL_WINDOW_BYTES));
    session.tell(this.#view());
    const tlsAtAgent = session.config.features?.includes(FEATURE_TLS_AT_AGENT) ?? false;
    this.#log.info('agent connected', {
      cluster: session.name,
      remote: session.remote,
      session: session.id,
      agents: this.registry.count(session.name),
      version: session.config.version || undefined,
      upstream: session.config.kubernetesSvcHost,
      auth: session.config.bearerToken?.length
        ? 'bearer token'
        : session.config.certData?.length
          ? 'client certificate'
          : tlsAtAgent
            ? 'kept by the agent'
            : 'none',
      upstreamTls: tlsAtAgent ? 'agent' : 'proxy',
    });
    session.once('close', () => this.metrics.sessionClosed(session));
    session.once('close', () =>
      this.#log.info('agent disconnected', {
        cluster: session.name,
        session: session.id,
        agents: this.registry.count(session.name),
      }),
    );
  }

  #scheduleStatus(name: string): void {
    if (this.#statusTimers.has(name)) return;
    this.#statusTimers.set(
      name,
      setTimeout(() => {
        this.#statusTimers.delete(name);
        void this.#writeStatus(name);
      }, STATUS_WRITE_DELAY_MS),
    );
  }

  async #writeStatus(name: string): Promise<void> {
    if (!this.#clusters.has(name)) return;
    const sessions = this.registry.of(name);
    const list = (f: (s: AgentSession) => string) => [...new Set(sessions.map(f))].join(',') || undefined;
    const since = sessions.length
      ? new Date(Math.min(...sessions.map((s) => s.connectedAt.getTime()))).toISOString()
      : undefined;
    try {
      await this.#opts.store.writeStatus(name, {
        connected: sessions.length > 0,
        agents: sessions.length,
        since,
        lastSeen: sessions.length ? new Date().toISOString() : this.#lastSeen.get(name),
        agentVersions: list((s) => s.config.version || 'unknown'),
        agentAddresses: list((s) => s.remote),
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
  if (x.length !== y.length) {
    timingSafeEqual(y, y);
    return false;
  }
  return timingSafeEqual(x, y);
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
