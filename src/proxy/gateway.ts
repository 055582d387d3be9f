import {
  createServer as createHttpServer,
  request as httpRequest,
  type ClientRequest,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { Server as NetServer } from 'node:net';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { truncate, type Logger } from '../observe/log.ts';
import { boundCluster } from '../pki/ca.ts';
import { clusterNameProblem } from '../store/names.ts';
import type { AgentSession } from '../tunnel/server.ts';
import { ClientCertificateCheck } from './client-certificate.ts';
import { closeServers, ConnectionGuard, listenOn } from './connection-guard.ts';
import { Conversations } from './conversation.ts';
import {
  certificateIdentity,
  ImpersonationCheck,
  impersonationHeaders,
  impersonationRequest,
  isIdentityHeader,
  type GatewayIdentity,
  type Identity,
  type ImpersonationRequest,
} from './identity.ts';
import type { ProxyMetrics } from './metrics.ts';
import {
  decodeIdentity,
  encodeIdentity,
  PEER_API,
  PEER_HEADERS,
  peerOf,
  PeerUpstream,
  type Peers,
  type Target,
} from './peers.ts';
import type { SessionRegistry } from './registry.ts';
import { rawStatus, sendStatus, type Refusal } from '../http/status.ts';
import { MemberApiserver, MemberKubesphere, type Upstream } from './upstream.ts';
import { WatchFrames } from './watch-frames.ts';
import type { StallBudget } from '../tunnel/stall-budget.ts';

const HEADERS_TIMEOUT_MS = 30_000;
export const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;
/** a connection that starts no request by then (after TLS) is closed */
const FIRST_REQUEST_TIMEOUT_MS = 30_000;
const KEEP_ALIVE_TIMEOUT_MS = 60_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;
export const DEFAULT_MAX_CONNECTIONS = 10_000;
export const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 1_000;
/** agents tried for one request without a body before the gateway answers 502 */
const MAX_ATTEMPTS = 3;
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
]);
/**
 * never forwarded from a client: the body's framing is tower's to set (whatever the client's was),
 * and a 100-continue is the gateway's to answer
 */
const CLIENT_FRAMING = new Set(['content-length', 'transfer-encoding', 'expect']);
const BEARER_PROTOCOL = 'base64url.bearer.authorization.k8s.io.';
const CLUSTER_PATH = /^\/clusters\/([^/?]*)(\/[^?]*)?(\?.*)?$/;

export interface GatewayLimits {
  /** requests in flight per cluster, watches and upgrades not counted (as kube-apiserver's --max-requests-inflight) */
  maxRequestsInflight?: number;
  /** what answers whose clients stopped reading may hold, in all, before new requests are answered 429 (the proxy's budget) */
  maxStalledBytes?: number;
  maxConnections: number;
  maxConnectionsPerAddress: number;
  /** until the member's response headers; a watch or stream is not limited once they arrive */
  requestTimeoutMs: number;
}

export const DEFAULT_GATEWAY_LIMITS: GatewayLimits = {
  maxConnections: DEFAULT_MAX_CONNECTIONS,
  maxConnectionsPerAddress: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
  requestTimeoutMs: DEFAULT_REQUEST_TIMEOUT_MS,
};

export const DEFAULT_MAX_REQUESTS_INFLIGHT = 1_000;

/** What every gateway of a proxy shares: who requests act as, certificates, limits, logging. */
export type GatewayPolicy = Pick<GatewayOptions, 'identity' | 'allowUnboundCertificates' | 'limits' | 'accessLog'>;
/** ... and the state they share: verdicts, requests in flight per cluster, metrics */
export type GatewayShared = GatewayPolicy &
  Pick<GatewayOptions, 'impersonation' | 'inflight' | 'stalled' | 'metrics' | 'draining' | 'peers'>;

/** Requests in flight per cluster, across the gateway and the cluster's own ports. */
export class InflightRequests {
  #byCluster = new Map<string, number>();
  /** false when `cluster` already has `max` */
  acquire(cluster: string, max: number): boolean {
    const n = this.#byCluster.get(cluster) ?? 0;
    if (n >= max) return false;
    this.#byCluster.set(cluster, n + 1);
    return true;
  }
  release(cluster: string): void {
    const n = (this.#byCluster.get(cluster) ?? 1) - 1;
    if (n <= 0) this.#byCluster.delete(cluster);
    else this.#byCluster.set(cluster, n);
  }
}

export interface GatewayOptions {
  registry: SessionRegistry;
  /** whether the store knows the cluster (the proxy keeps this from the store's watch) */
  knows: (name: string) => boolean;
  /** HTTPS with client certificates from this CA required; without it, plain HTTP and no client check */
  tls?: { caPem: string; cert: string; key: string };
  /** serves this one cluster at the root (a cluster's own port) instead of /clusters/<name>/ */
  cluster?: string;
  /** what the requests reach in the member: its kube-apiserver (default) or its ks-apiserver */
  target?: 'kubernetes' | 'kubesphere';
  /** who requests act as in the member's kube-apiserver (default: the client certificate) */
  identity?: GatewayIdentity;
  /** the shared gateway serves certificates not bound to a cluster (to any cluster) */
  allowUnboundCertificates?: boolean;
  /** shared by the proxy's gateways, so that the limit holds per cluster */
  inflight?: InflightRequests;
  /** shared by the proxy's gateways, so that --max-stalled-memory holds per process */
  stalled?: StallBudget;
  metrics?: ProxyMetrics;
  /** shared by the proxy's gateways, so that a verdict is asked once */
  impersonation?: ImpersonationCheck;
  limits?: GatewayLimits;
  /** one log line per request */
  accessLog?: boolean;
  /** the other replicas: where a request goes when no agent of its cluster is connected here */
  peers?: Peers;
  /** answers /peer/v1/… asked by other replicas (the shared gateway only) */
  peerApi?: (req: IncomingMessage, res: ServerResponse) => void;
  /** this replica drains: every answer closes its connection */
  draining?: () => boolean;
  log: Logger;
}

interface Route {
  /** undefined while no agent of the cluster is connected to this replica */
  member: Upstream | undefined;
  path: string;
  cluster: string;
  target: Target;
  /** the certificate's identity, when requests act as it */
  identity?: Identity;
  /** the replica that forwarded this request: it is served by this replica's agents or not at all */
  fromPeer?: string;
}

type Routed = Route & { member: Upstream };

/** A request body as tower forwards it, by the one framing the client's head allows. */
type Body = { kind: 'none' } | { kind: 'length'; bytes: number } | { kind: 'chunked' };

/** what a TLS connection's certificate says, read once per connection */
interface Peer {
  problem?: string;
  bound: string | undefined;
  identity: Identity | string | undefined;
  replica?: string;
}

/**
 * The cluster gateway: one HTTPS port, client certificates from tower's CA required, routing
 * /clusters/<name>/… to that member's kube-apiserver through one of its agents, acting as the
 * certificate's identity. Upgrades (SPDY, WebSocket) and watches stream through; no body is buffered.
 */
export class Gateway {
  readonly server: Server | HttpsServer;
  /** what listens: the HTTP server itself, or a TCP listener that hands it connections once they speak */
  #listener: NetServer;
  #opts: GatewayOptions;
  #limits: GatewayLimits;
  #guard: ConnectionGuard;
  #impersonation: ImpersonationCheck;
  /** each session's upstreams, one per target: what a request reaches is decided by its route, never by what came first */
  #members = new WeakMap<AgentSession, Partial<Record<Target, Upstream>>>();
  /** connections from other replicas with a request in flight: they send one at a time */
  #peerBusy = new WeakSet<Duplex>();
  /** what each client connection is still owed, so that tower's own writes keep the answers' order */
  #conversations = new Conversations();
  /** requests whose bodies turned out not to be HTTP, and how to cut off what was forwarded of each */
  #brokenBodies = new WeakSet<IncomingMessage>();
  #cutOff = new WeakMap<IncomingMessage, () => void>();
  #peers = new WeakMap<TLSSocket, Peer>();
  #certificates: ClientCertificateCheck | undefined;
  /** requests in flight (watches not counted) and upgraded connections: what a drain waits for */
  #active = 0;
  #upgraded = new Set<Duplex>();
  /** hands each open watch back at its next event boundary */
  #watches = new Set<() => void>();
  #log: Logger;

  constructor(opts: GatewayOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.#limits = opts.limits ?? DEFAULT_GATEWAY_LIMITS;
    this.#impersonation = opts.impersonation ?? new ImpersonationCheck();
    const timeouts = { headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: 0, keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS };
    this.#guard = new ConnectionGuard({
      maxTotal: this.#limits.maxConnections,
      maxPerAddress: this.#limits.maxConnectionsPerAddress,
      firstRequestMs: FIRST_REQUEST_TIMEOUT_MS,
      what: opts.cluster ? `port of cluster "${opts.cluster}"` : 'gateway',
      log: opts.log,
    });
    if (opts.tls) {
      this.#certificates = new ClientCertificateCheck(opts.tls.caPem);
      const https = createHttpsServer({
        cert: opts.tls.cert,
        key: opts.tls.key,
        // no `ca`: the client certificate is asked for and verified here (ClientCertificateCheck),
        // so that a missing or foreign one gets a readable 401 and no native memory stays behind
        requestCert: true,
        rejectUnauthorized: false,
        ALPNProtocols: ['http/1.1'],
        handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
        ...timeouts,
      });
      this.server = https;
    } else {
      this.server = createHttpServer(timeouts);
    }
    this.#listener = this.#guard.listenerFor(this.server, TLS_HANDSHAKE_TIMEOUT_MS);
    this.server.on('request', (req, res) => this.#onRequest(req, res));
    // Node's own 100 Continue for a response queued behind another is written after that response's
    // head; and a final answer without a 100 ends the connection, after requests pipelined behind it
    // were already forwarded. Such a request is refused (417) before anything behind it is read.
    this.server.on('checkContinue', (req, res) => {
      if (res.socket) res.writeContinue();
      this.#onRequest(req, res, !res.socket);
    });
    this.server.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
    // Node would destroy the connection at a CONNECT, answers owed before it and all
    this.server.on('connect', (req, socket) => {
      this.#guard.seen(socket);
      socket.on('error', () => socket.destroy());
      const conversation = this.#conversations.of(socket);
      conversation.closeWithSocket();
      conversation.endHere();
      conversation.afterAnswers(() => {
        this.#log.debug(1, 'gateway refused a CONNECT', { url: req.url });
        if (!socket.writable) {
          socket.destroy();
          return;
        }
        socket.end(
          rawStatus({
            status: 405,
            message:
              'tower gateway: CONNECT is not served here; the gateway serves Kubernetes API requests under /clusters/<name>/',
          }),
          () => socket.destroy(),
        );
      });
    });
    this.server.on('clientError', (err, socket) => {
      this.#log.debug(1, 'gateway dropped a malformed request', { err: err.message });
      // the answers to requests read before these bytes go first; then this 400, and the connection ends
      const conversation = this.#conversations.of(socket);
      if (conversation.ended) return;
      conversation.refuse();
      // in a request's body: that request's answer is the 400 (see #onRequest)
      if (conversation.bodyBroke(err)) return;
      conversation.afterAnswers(() => {
        if (!socket.writable) {
          socket.destroy();
          return;
        }
        socket.end(
          rawStatus({
            status: 400,
            message: `tower gateway: malformed HTTP request (${(err as NodeJS.ErrnoException).code ?? err.message})`,
          }),
          () => socket.destroy(),
        );
      });
    });
  }

  /** connections open now (for tests and metrics) */
  get connections(): number {
    return this.#guard.total;
  }

  listen(port: number, host: string): Promise<number> {
    return listenOn(this.#listener, port, host);
  }

  /** Serves a new certificate to new connections (e.g. when a load balancer's address joins the SANs). */
  setCertificate(cert: string, key: string): void {
    if (!this.#opts.tls) return;
    this.#opts.tls = { ...this.#opts.tls, cert, key };
    (this.server as HttpsServer).setSecureContext({ cert, key });
  }

  close(): Promise<void> {
    this.#guard.close();
    return closeServers(this.#listener, this.server);
  }

  /** requests in flight and upgraded connections (watches are handed back instead) */
  get busy(): number {
    return this.#active + this.#upgraded.size;
  }

  /** Drain: no new connections, idle ones close; what is in flight carries on. */
  stopAccepting(): void {
    this.#listener.close();
    this.server.closeIdleConnections();
  }

  /** Ends every watch at its next event boundary, so that its client resumes elsewhere from the last event it got. */
  handBackWatches(): number {
    const n = this.#watches.size;
    for (const handBack of [...this.#watches]) handBack();
    return n;
  }

  #actsAsCertificate(target: Target): boolean {
    return target !== 'kubesphere' && !!this.#opts.tls && (this.#opts.identity ?? 'certificate') === 'certificate';
  }

  /** Checks the client certificate and the route; answers the problem itself when there is one. */
  #route(req: IncomingMessage): Route | Refusal {
    const socket = req.socket as TLSSocket;
    const peer = this.#opts.tls ? this.#peer(socket) : undefined;
    if (peer?.problem) {
      return {
        status: 401,
        message: `tower gateway: a client certificate signed by tower's CA is required (this connection has ${peer.problem}); get a kubeconfig with: tower kubeconfig <cluster>`,
      };
    }
    if (peer?.replica && !this.#opts.cluster) return this.#peerRoute(req, peer.replica);
    const bound = peer?.bound;
    const m = this.#opts.cluster ? undefined : CLUSTER_PATH.exec(req.url ?? '');
    let name: string;
    let path: string;
    if (this.#opts.cluster) {
      name = this.#opts.cluster;
      path = req.url ?? '/';
    } else if (m) {
      name = safeDecode(m[1]!);
      path = (m[2] || '/') + (m[3] ?? '');
    } else if (bound) {
      // `kubectl get --raw /version` drops the server's path; the certificate still names the cluster
      name = bound;
      path = req.url ?? '/';
    } else {
      return {
        status: 404,
        message: `tower gateway: no route for ${JSON.stringify(truncate(req.url ?? ''))}; paths look like /clusters/<name>/api/...`,
      };
    }
    const problem = clusterNameProblem(name);
    if (problem)
      return {
        status: 400,
        message: `tower gateway: invalid cluster name ${JSON.stringify(truncate(name))}: ${problem}`,
      };
    // before the store is asked: a bound certificate learns nothing of other clusters, existing or not
    if (bound && bound !== name) {
      return {
        status: 403,
        message: `tower gateway: this client certificate is for cluster "${bound}", not "${name}" (get one with: tower kubeconfig ${name})`,
      };
    }
    if (this.#opts.tls && !bound && !this.#opts.cluster && !this.#opts.allowUnboundCertificates) {
      return {
        status: 403,
        message: `tower gateway: this client certificate is not bound to a cluster (get one with: tower kubeconfig ${name}; or start the proxy with --allow-unbound-certificates)`,
      };
    }
    if (!this.#opts.knows(name))
      return { status: 404, message: `cluster "${name}" not found in tower (register it with: tower token ${name})` };
    const target = this.#opts.target ?? 'kubernetes';
    let identity: Identity | undefined;
    if (this.#actsAsCertificate(target)) {
      if (typeof peer!.identity === 'string') return { status: 403, message: `tower gateway: ${peer!.identity}` };
      identity = peer!.identity;
    }
    return this.#local({ member: undefined, path, cluster: name, target, identity });
  }

  /** A request another replica forwarded: cluster, target and the identity it verified come in its headers. */
  #peerRoute(req: IncomingMessage, replica: string): Route | Refusal {
    const name = String(req.headers[PEER_HEADERS.cluster] ?? '');
    const target = req.headers[PEER_HEADERS.target];
    if (target !== 'kubernetes' && target !== 'kubesphere')
      return { status: 400, message: `tower gateway: replica ${replica} forwarded a request for no valid target` };
    const identityHeader = req.headers[PEER_HEADERS.identity];
    const signed = this.#opts.peers!.signature.problem(req.headers[PEER_HEADERS.signature], {
      method: req.method ?? '',
      path: req.url ?? '',
      cluster: name,
      target,
      identity: typeof identityHeader === 'string' ? identityHeader : '',
    });
    if (signed) {
      this.#log.warn('refused a request on a replica connection that no replica signed', { replica, why: signed });
      return { status: 403, message: `tower gateway: a request from replica ${replica} with ${signed}` };
    }
    const problem = clusterNameProblem(name);
    if (problem)
      return {
        status: 400,
        message: `tower gateway: replica ${replica} forwarded a request for an invalid cluster name ${JSON.stringify(truncate(name))}: ${problem}`,
      };
    if (!this.#opts.knows(name))
      return { status: 404, message: `cluster "${name}" not found in tower (register it with: tower token ${name})` };
    let identity: Identity | undefined;
    if (this.#actsAsCertificate(target)) {
      identity = decodeIdentity(typeof identityHeader === 'string' ? identityHeader : undefined);
      if (!identity)
        return {
          status: 400,
          message: `tower gateway: replica ${replica} forwarded a request without a valid identity`,
        };
    }
    return this.#local({ member: undefined, path: req.url ?? '/', cluster: name, target, identity, fromPeer: replica });
  }

  /** The route through one of this replica's agents of the cluster, when it has one. */
  #local(route: Route): Route | Refusal {
    const session = this.#opts.registry.pick(route.cluster);
    if (!session) return route;
    const member = this.#member(session, route.target);
    if (!member.hostPort || member.hostPort.startsWith(':'))
      return {
        status: 502,
        message: `the agent of cluster "${route.cluster}" announced no ${route.target === 'kubesphere' ? 'ks-apiserver (KubeSphereSvcHost; agent flag --kubesphere-service)' : 'kube-apiserver'}`,
      };
    return { ...route, member };
  }

  /**
   * Calls `then` with a member for the route: this replica's agent, or else another replica that
   * holds one (one hop: a forwarded request is never forwarded again). A 503 when none has.
   */
  #withMember(route: Route, then: (r: Routed) => void, refuse: (r: Refusal) => void): void {
    if (route.member) {
      then(route as Routed);
      return;
    }
    const noAgent: Refusal = {
      status: 503,
      retryAfter: 1,
      message: `cluster "${route.cluster}" has no agent connected to tower (start one with the command that "tower token ${route.cluster}" prints)`,
    };
    const peers = this.#opts.peers;
    if (!peers || route.fromPeer) {
      refuse(noAgent);
      return;
    }
    void peers.find(route.cluster).then((replica) => {
      if (!replica) {
        refuse(noAgent);
        return;
      }
      this.#opts.metrics?.peerForwards.inc({ replica: replica.id });
      then({ ...route, member: peers.upstream(replica, route.target) });
    });
  }

  #peer(socket: TLSSocket): Peer {
    let p = this.#peers.get(socket);
    if (!p) {
      const cert = socket.getPeerCertificate(true);
      const problem = this.#certificates!.problem(cert.raw);
      p = problem
        ? { problem, bound: undefined, identity: undefined }
        : {
            bound: boundCluster(cert.subjectaltname),
            identity: this.#actsAsCertificate(this.#opts.target ?? 'kubernetes')
              ? certificateIdentity(cert)
              : undefined,
            // a replica's certificate means something only where replicas exist, and only on the shared gateway
            replica: this.#opts.peers && !this.#opts.cluster ? peerOf(cert.subjectaltname) : undefined,
          };
      this.#peers.set(socket, p);
    }
    return p;
  }

  /**
   * The headers for the member. Who the request acts as is never the client's word: its
   * Authorization, Impersonate-* and X-Remote-* go, and the certificate's identity (or an
   * impersonation the member allowed it) is sent. ks-apiserver gets the client's headers as they are.
   */
  #upstreamHeaders(
    req: IncomingMessage,
    route: Routed,
    actAs: Identity | ImpersonationRequest | undefined,
  ): OutgoingHttpHeaders {
    const { member } = route;
    const certificate = route.identity !== undefined;
    const dropAuth = !member.keepsClientAuthorization;
    const out = forwardedHeaders(req, (k) => (certificate ? isIdentityHeader(k) : dropAuth && k === 'authorization'));
    if (certificate) dropBearerProtocol(out);
    out.host = member.hostHeader;
    if (member.authorization) out.authorization = member.authorization;
    if (actAs) impersonationHeaders(out, actAs);
    return out;
  }

  /**
   * The headers for the replica a request is forwarded to: the client's, less what says who it is
   * (a client's own impersonation stays, for that replica to judge as this one would), plus the
   * cluster, the target and the identity this replica verified.
   */
  #peerHeaders(req: IncomingMessage, route: Routed): OutgoingHttpHeaders {
    const keepAuth = route.target === 'kubesphere';
    const out = forwardedHeaders(req, (k) => !keepAuth && (k === 'authorization' || k.startsWith('x-remote-')));
    out.host = route.member.hostHeader;
    out[PEER_HEADERS.cluster] = route.cluster;
    out[PEER_HEADERS.target] = route.target;
    const identity = route.identity ? encodeIdentity(route.identity) : '';
    if (identity) out[PEER_HEADERS.identity] = identity;
    out[PEER_HEADERS.signature] = this.#opts.peers!.signature.sign({
      method: req.method ?? '',
      path: route.path,
      cluster: route.cluster,
      target: route.target,
      identity,
    });
    return out;
  }

  /** The headers for `route`'s member: a replica's, or the member's once whom the request acts as is settled. */
  #headersFor(
    req: IncomingMessage,
    route: Routed,
    then: (headers: OutgoingHttpHeaders) => void,
    refuse: (r: Refusal) => void,
  ): void {
    if (route.member instanceof PeerUpstream) {
      then(this.#peerHeaders(req, route));
      return;
    }
    this.#actAs(req, route, (actAs) => then(this.#upstreamHeaders(req, route, actAs)), refuse);
  }

  /**
   * Whom the request acts as: the certificate's identity, or the impersonation the client asked for
   * once the member allowed it. Calls back with a refusal otherwise.
   */
  #actAs(
    req: IncomingMessage,
    route: Routed,
    then: (actAs: Identity | ImpersonationRequest | undefined) => void,
    refuse: (r: Refusal) => void,
  ): void {
    const identity = route.identity;
    if (!identity) {
      then(undefined);
      return;
    }
    const wanted = impersonationRequest(req as IncomingMessage & { headersDistinct: Record<string, string[]> });
    if (wanted === undefined) {
      then(identity);
      return;
    }
    if (typeof wanted === 'string') {
      refuse({ status: 400, message: `tower gateway: ${wanted}` });
      return;
    }
    this.#impersonation.denied(route.member, route.cluster, identity, wanted).then(
      (denied) => {
        if (denied) refuse({ status: 403, message: `tower gateway: ${denied}` });
        else then(wanted);
      },
      (err: Error) => {
        refuse({
          status: 502,
          message: `tower gateway: cannot ask cluster "${route.cluster}" whether user "${identity.user}" may impersonate: ${err.message}`,
        });
      },
    );
  }

  /**
   * Counts a request that is done (an upgrade once answered) and logs it with --access-log. The
   * cluster label is a routed cluster's only: never a name a client made up. `path` is as the
   * member sees it (the route's), or as the client sent it when there was no route.
   */
  #finished(
    req: IncomingMessage,
    route: Route | Refusal,
    status: number,
    started: number,
    verb = verbOf(req, route),
  ): void {
    const cluster = 'cluster' in route ? route.cluster : undefined;
    const path = 'path' in route ? route.path : (req.url ?? '');
    const seconds = (performance.now() - started) / 1000;
    const metrics = this.#opts.metrics;
    if (metrics) {
      metrics.requests.inc({ cluster: cluster ?? '', verb, code: String(status) });
      if (verb !== 'watch') metrics.requestDuration.observe({ cluster: cluster ?? '' }, seconds);
    }
    if (!this.#opts.accessLog) return;
    const peer = this.#opts.tls ? this.#peers.get(req.socket as TLSSocket) : undefined;
    const who = peer && typeof peer.identity === 'object' ? peer.identity : undefined;
    this.#log.info('access', {
      cluster,
      user: who?.user,
      groups: who?.groups.join(','),
      as: req.headers['impersonate-user'],
      verb,
      path,
      status,
      duration: `${Math.round(seconds * 1000)}ms`,
      remote: req.socket.remoteAddress,
    });
  }

  /**
   * Counts a request against its cluster's in-flight limit; a refusal when the cluster is at it, or
   * when stalled answers hold --max-stalled-memory. Watches are not counted.
   */
  #admit(res: ServerResponse, route: Route, verb: string): Refusal | undefined {
    const stalled = this.#stalledRefusal(route.cluster);
    if (stalled) return stalled;
    const max = this.#limits.maxRequestsInflight ?? DEFAULT_MAX_REQUESTS_INFLIGHT;
    const inflight = this.#opts.inflight;
    if (!inflight || verb === 'watch' || /[?&]follow=(true|1)(&|$)/.test(route.path)) return undefined;
    if (!inflight.acquire(route.cluster, max)) {
      this.#opts.metrics?.inflightRefusals.inc({ cluster: route.cluster });
      return {
        status: 429,
        retryAfter: 1,
        message: `tower gateway: cluster "${route.cluster}" has ${max} requests in flight through tower, its limit (the proxy's --max-requests-inflight); retry shortly`,
      };
    }
    res.once('close', () => inflight.release(route.cluster));
    return undefined;
  }

  /** A 429 while the answers whose clients stopped reading hold the proxy's --max-stalled-memory (requests and upgrades alike). */
  #stalledRefusal(cluster: string): Refusal | undefined {
    const budget = this.#opts.stalled;
    if (!budget?.exhausted) return undefined;
    this.#opts.metrics?.stalledRefusals.inc({ cluster });
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    return {
      status: 429,
      retryAfter: 1,
      message: `tower gateway: answers whose clients stopped reading hold ${mib(budget.reservedBytes)} MiB in this proxy, its limit of ${mib(budget.maxBytes)} MiB (the proxy's --max-stalled-memory); retry shortly`,
    };
  }

  /**
   * Backpressure from `to` to `from` that is accounted for: `from` pauses while `to` is full, and
   * the stream reserves what it then holds against --max-stalled-memory until `to` drains or
   * closes. Returns what to call when a write to `to` returned false.
   */
  #stallable(from: IncomingMessage | Duplex, to: ServerResponse | Duplex): () => void {
    const stall = this.#opts.stalled?.stream();
    to.on('drain', () => {
      stall?.release();
      from.resume();
    });
    to.once('close', () => stall?.end());
    return () => {
      from.pause();
      stall?.hold();
    };
  }

  #onRequest(req: IncomingMessage, res: ServerResponse, continueOutOfTurn = false): void {
    this.#guard.seen(req.socket);
    const conversation = this.#conversations.of(req.socket);
    // pipelined after a refusal that ends the connection: not this client's request, and never answered
    if (conversation.ended) {
      req.resume();
      return;
    }
    // a body that turns out not to be HTTP (a bad chunk): what was forwarded of it is cut off, and
    // its answer is a 400, the connection's last
    conversation.owe(req, res, (err: NodeJS.ErrnoException) => {
      this.#brokenBodies.add(req);
      this.#cutOff.get(req)?.();
      res.shouldKeepAlive = false;
      if (!res.headersSent && !res.destroyed)
        sendStatus(res, {
          status: 400,
          message: `tower gateway: malformed request body (${err.code ?? err.message}); nothing more of it was forwarded`,
        });
      else res.destroy();
    });
    // a draining replica's clients reconnect, through their load balancer, to another one
    if (this.#opts.draining?.()) {
      res.shouldKeepAlive = false;
      conversation.endHere();
    }
    if (this.#opts.peers && this.#opts.tls && !this.#opts.cluster && !this.#oneAtATime(req, res)) return;
    if (!this.#opts.cluster && req.url?.startsWith(PEER_API)) {
      this.#onPeerApi(req, res);
      return;
    }
    const started = performance.now();
    const refuse = (r: Refusal) => {
      this.#log.debug(1, 'gateway refused a request', { url: req.url, status: r.status, why: r.message });
      if (!res.headersSent && !res.destroyed) sendStatus(res, r);
      req.resume();
    };
    const route = this.#route(req);
    // once per request: the in-flight limit and the metrics both go by it
    const verb = verbOf(req, route);
    res.once('close', () => this.#finished(req, route, res.statusCode, started, verb));
    if (continueOutOfTurn) {
      res.shouldKeepAlive = false;
      conversation.refuse();
      refuse({
        status: 417,
        message:
          'tower gateway: a request that expects 100-continue cannot be pipelined behind another; send it on a connection of its own, or without Expect',
      });
      return;
    }
    if ('status' in route) {
      refuse(route);
      return;
    }
    const body = requestBody(req);
    if (typeof body === 'string') {
      // the bytes after an ambiguous head are not to be read as anything: the connection ends with this answer
      res.shouldKeepAlive = false;
      conversation.refuse();
      refuse({ status: 400, message: `tower gateway: ${body}` });
      return;
    }
    const full = this.#admit(res, route, verb);
    if (full) {
      refuse(full);
      return;
    }
    res.on('close', () => {
      if (!res.writableFinished) req.destroy();
    });
    if (verb !== 'watch') {
      this.#active++;
      res.once('close', () => {
        this.#active--;
      });
    }
    this.#withMember(
      route,
      (routed) => {
        if (res.destroyed) return;
        this.#headersFor(
          req,
          routed,
          (headers) => this.#forward(req, res, routed, headers, body, new Set(), verb),
          refuse,
        );
      },
      refuse,
    );
  }

  /**
   * Another replica sends one request at a time on a connection and waits for its answer: a request
   * that arrives before the previous answer has ended did not come from that replica's gateway
   * (bytes smuggled in a body, say). The connection ends and nothing of it is forwarded.
   */
  #oneAtATime(req: IncomingMessage, res: ServerResponse): boolean {
    const socket = req.socket;
    const replica = this.#peer(socket as TLSSocket).replica;
    if (!replica) return true;
    if (this.#peerBusy.has(socket)) {
      this.#log.warn('closed a replica connection that sent a request before the previous answer ended', {
        replica,
        url: truncate(req.url ?? ''),
      });
      socket.destroy();
      return false;
    }
    this.#peerBusy.add(socket);
    res.once('close', () => this.#peerBusy.delete(socket));
    return true;
  }

  /** /peer/v1/… : for other replicas only (their certificates from tower's CA name them). */
  #onPeerApi(req: IncomingMessage, res: ServerResponse): void {
    const peer = this.#opts.tls ? this.#peer(req.socket as TLSSocket) : undefined;
    if (!peer?.replica || !this.#opts.peerApi) {
      sendStatus(res, { status: 403, message: 'tower gateway: /peer/ is for other replicas of this proxy' });
      req.resume();
      return;
    }
    this.#opts.peerApi(req, res);
  }

  /**
   * Sends the request through `route.member`. A request without a body that fails before any answer
   * (the agent died, the channel was refused) is retried through another agent of the cluster.
   * Whatever the member answers, this request alone fails: 502 for a broken answer, 504 for none.
   */
  #forward(
    req: IncomingMessage,
    res: ServerResponse,
    route: Routed,
    headers: OutgoingHttpHeaders,
    body: Body,
    tried: Set<unknown>,
    verb: string,
  ): void {
    // the client's body broke while a member was being chosen (it has had its answer), or the client
    // left meanwhile (an impersonation asked of the member takes a round trip): nothing goes on
    if (this.#brokenBodies.has(req) || res.destroyed) return;
    const { member, path, cluster } = route;
    tried.add(member.key);
    const bodyless = body.kind === 'none';
    // tower frames what it forwards, whatever the method: Node's client writes a GET's, DELETE's or
    // OPTIONS' body unframed unless told, and the member would read it as the next request
    if (body.kind === 'length') headers['content-length'] = String(body.bytes);
    else if (body.kind === 'chunked') headers['transfer-encoding'] = 'chunked';
    // the fields object is built only when someone reads it: this runs for every request
    if (this.#log.enabled(4)) this.#log.debug(4, 'forward', { cluster, method: req.method, path, via: member.via });
    let upstream: ClientRequest;
    try {
      // the body piped in is exactly what its framing says: Node's parser delivered it so
      upstream = httpRequest({ agent: member.pool, method: req.method, path, headers });
    } catch (err) {
      sendStatus(res, {
        status: 502,
        message: `tower gateway: cannot forward this request to cluster "${cluster}": ${(err as Error).message}`,
      });
      req.resume();
      return;
    }
    let answered = false;
    let timedOut = false;
    const timeoutMs = this.#limits.requestTimeoutMs;
    const timer =
      timeoutMs > 0
        ? setTimeout(() => {
            timedOut = true;
            upstream.destroy();
          }, timeoutMs)
        : undefined;
    upstream.on('response', (up) => {
      answered = true;
      clearTimeout(timer);
      // this runs inside the tunnel's read of the channel: nothing may throw out of it
      try {
        this.#relay(up, res, upstream, route, verb);
      } catch (err) {
        this.#log.warn('cannot relay an answer', { cluster, err: (err as Error).message });
        up.destroy();
        upstream.destroy();
        res.destroy();
      }
    });
    upstream.on('error', (err) => {
      clearTimeout(timer);
      // the client's body broke: it has had its answer (in #onRequest)
      if (this.#brokenBodies.has(req)) return;
      if (answered || res.headersSent) {
        if (!res.writableEnded) res.destroy();
        return;
      }
      if (timedOut) {
        sendStatus(res, {
          status: 504,
          message: `tower gateway: the ${this.#what(route.target)} of cluster "${cluster}" did not answer within ${timeoutMs / 1000}s (the proxy's --request-timeout)`,
        });
        return;
      }
      const failed = () =>
        sendStatus(res, {
          status: 502,
          message: `tower gateway: cannot reach the ${this.#what(route.target)} of cluster "${cluster}" through ${member instanceof PeerUpstream ? member.via : 'its agent'}: ${err.message}`,
        });
      if (!bodyless || tried.size >= MAX_ATTEMPTS || res.destroyed) {
        failed();
        return;
      }
      this.#next(route, tried).then((next) => {
        if (!next) {
          failed();
          return;
        }
        this.#log.debug(1, 'retrying a request', { cluster, via: member.via, next: next.via, err: err.message });
        headers.host = next.hostHeader;
        if (next.authorization) headers.authorization = next.authorization;
        else if (!(next instanceof PeerUpstream)) delete headers.authorization;
        this.#forward(req, res, { ...route, member: next }, headers, body, tried, verb);
      }, failed);
    });
    res.on('close', () => {
      clearTimeout(timer);
      if (!res.writableFinished) upstream.destroy();
    });
    if (bodyless) {
      req.resume();
      upstream.end();
    } else {
      req.on('error', () => upstream.destroy());
      this.#cutOff.set(req, () => {
        req.unpipe(upstream);
        upstream.destroy();
      });
      req.pipe(upstream);
    }
  }

  /**
   * Another way to the route's member for a retry: another agent here for a local route, another
   * replica for a forwarded one (the headers were made for that kind).
   */
  async #next(route: Routed, tried: Set<unknown>): Promise<Upstream | undefined> {
    const { member, cluster } = route;
    if (!(member instanceof PeerUpstream)) {
      const session = this.#opts.registry.pick(cluster, tried);
      return session ? this.#member(session, route.target) : undefined;
    }
    const peers = this.#opts.peers!;
    peers.missed(cluster, member.replica);
    // a replica's key is its id
    const replica = await peers.find(cluster, new Set([...tried].filter((k): k is string => typeof k === 'string')));
    return replica ? peers.upstream(replica, route.target) : undefined;
  }

  /** The member's answer to the client, or a 502 when its head cannot be relayed as it is. */
  #relay(up: IncomingMessage, res: ServerResponse, upstream: ClientRequest, route: Route, verb: string): void {
    const { cluster } = route;
    const code = up.statusCode ?? 0;
    let problem = code >= 200 && code <= 599 ? undefined : `an invalid status code ${code}`;
    if (!problem) {
      try {
        res.writeHead(code, up.statusMessage, downstreamHeaders(up));
      } catch (err) {
        problem = `a response head that cannot be relayed (${(err as Error).message})`;
      }
    }
    if (problem) {
      up.destroy();
      upstream.destroy();
      sendStatus(res, {
        status: 502,
        message: `tower gateway: the ${this.#what(route.target)} of cluster "${cluster}" answered with ${problem}`,
      });
      return;
    }
    // a streamed answer (a watch) must reach the client before its first event; one with a
    // length leaves with its body, in one record
    if (up.headers['content-length'] === undefined) res.flushHeaders();
    // relayed by hand, not piped (nor pipeline: its promise costs an AbortController per request), so
    // that an answer whose client stops reading counts as stalled while it holds the tunnel's window
    up.on('error', () => res.destroy());
    let handedBack = false;
    // an answer cut off mid-body is cut off for the client too, never ended as if whole
    up.on('close', () => {
      if (!up.complete && !handedBack) res.destroy();
    });
    const stalled = this.#stallable(up, res);
    if (verb !== 'watch') {
      up.on('data', (d: Buffer) => {
        if (!res.write(d)) stalled();
      });
      up.on('end', () => res.end());
      return;
    }
    // a watch is relayed event by event, so that a drain can end it where an event ends
    const frames = new WatchFrames(String(up.headers['content-type'] ?? ''));
    let ending = false;
    const end = () => {
      handedBack = true;
      this.#watches.delete(handBack);
      res.end();
      up.destroy();
      upstream.destroy();
    };
    const handBack = () => {
      ending = true;
      if (frames.atBoundary) end();
    };
    this.#watches.add(handBack);
    res.once('close', () => this.#watches.delete(handBack));
    up.on('data', (d: Buffer) => {
      if (handedBack) return;
      const cut = frames.feed(d);
      if (ending && cut >= 0) {
        res.write(d.subarray(0, cut));
        end();
        return;
      }
      if (!res.write(d)) stalled();
    });
    up.on('end', () => {
      if (!handedBack) res.end();
    });
  }

  #what(target: Target = this.#opts.target ?? 'kubernetes'): string {
    return target === 'kubesphere' ? 'ks-apiserver' : 'kube-apiserver';
  }

  #member(session: AgentSession, target: Target): Upstream {
    let members = this.#members.get(session);
    if (!members) {
      members = {};
      this.#members.set(session, members);
    }
    return (members[target] ??= target === 'kubesphere' ? new MemberKubesphere(session) : new MemberApiserver(session));
  }

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.#guard.seen(socket);
    const conversation = this.#conversations.of(socket);
    conversation.closeWithSocket();
    // after a refusal that ends the connection: its answer goes, then the connection ends
    if (conversation.ended) {
      conversation.afterAnswers(() => socket.destroy());
      return;
    }
    // an upgrade pipelined behind requests still being answered: its refusal or its 101 is written
    // straight to the socket, so it waits until their answers have gone
    if (conversation.owed > 0) {
      conversation.afterAnswers(() => {
        if (!socket.destroyed) this.#onUpgradeInTurn(req, socket, head);
      });
      return;
    }
    this.#onUpgradeInTurn(req, socket, head);
  }

  #onUpgradeInTurn(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const started = performance.now();
    socket.on('error', () => socket.destroy());
    const refuse = (r: Refusal, route?: Route) => {
      this.#log.debug(1, 'gateway refused an upgrade', { url: req.url, status: r.status, why: r.message });
      if (socket.writable) socket.end(rawStatus(r));
      this.#finished(req, route ?? r, r.status, started);
    };
    const found = this.#route(req);
    if ('status' in found) {
      refuse(found);
      return;
    }
    const full = this.#stalledRefusal(found.cluster);
    if (full) {
      refuse(full, found);
      return;
    }
    const body = requestBody(req);
    if (typeof body === 'string' || body.kind !== 'none') {
      refuse(
        {
          status: 400,
          message: `tower gateway: an upgrade request carries no body (this one has ${typeof body === 'string' ? body : `a ${body.kind === 'length' ? 'Content-Length' : 'chunked'} body`})`,
        },
        found,
      );
      return;
    }
    this.#withMember(
      found,
      (route) =>
        this.#headersFor(
          req,
          route,
          (headers) => {
            if (socket.destroyed) return;
            const { member, path, cluster } = route;
            if (this.#log.enabled(4))
              this.#log.debug(4, 'forward upgrade', {
                cluster,
                method: req.method,
                path,
                upgrade: req.headers.upgrade,
                via: member.via,
              });
            headers.connection = 'Upgrade';
            headers.upgrade = req.headers.upgrade;
            const timeoutMs = this.#limits.requestTimeoutMs;
            let timer: NodeJS.Timeout | undefined;
            // refuse() ends the socket after the Status: destroying it as well could cut that short
            const fail = (status: number, message: string) => {
              clearTimeout(timer);
              refuse({ status, message }, route);
              if (!socket.writable) socket.destroy();
            };
            // upgraded connections get a channel of their own, never a pooled one
            member.connect().then(
              (tls) => {
                if (socket.destroyed) {
                  tls.destroy();
                  return;
                }
                let upReq: ClientRequest;
                try {
                  upReq = httpRequest({ createConnection: () => tls, method: req.method, path, headers });
                } catch (err) {
                  tls.destroy();
                  fail(
                    502,
                    `tower gateway: cannot forward this upgrade to cluster "${cluster}": ${(err as Error).message}`,
                  );
                  return;
                }
                timer =
                  timeoutMs > 0
                    ? setTimeout(() => {
                        upReq.destroy();
                        fail(
                          504,
                          `tower gateway: the ${this.#what(route.target)} of cluster "${cluster}" did not answer within ${timeoutMs / 1000}s (the proxy's --request-timeout)`,
                        );
                      }, timeoutMs)
                    : undefined;
                const invalid = `tower gateway: the ${this.#what(route.target)} of cluster "${cluster}" answered the upgrade with an invalid status line`;
                // both run inside the tunnel's read of the channel: nothing may throw out of them
                upReq.on('upgrade', (upRes, upSocket, upHead) => {
                  clearTimeout(timer);
                  if (!validStatusLine(upRes)) {
                    upSocket.destroy();
                    fail(502, invalid);
                    return;
                  }
                  upSocket.on('error', () => socket.destroy());
                  // a drain waits for upgraded connections (exec, port-forward) until its grace period ends
                  this.#upgraded.add(socket);
                  socket.on('close', () => {
                    this.#upgraded.delete(socket);
                    upSocket.destroy();
                  });
                  upSocket.on('close', () => socket.destroy());
                  socket.write(rawHead(upRes));
                  if (upHead.length) socket.write(upHead);
                  if (head.length) upSocket.write(head);
                  // the member's side by hand, so that a client that stops reading counts as stalled
                  const stalled = this.#stallable(upSocket, socket);
                  upSocket.on('data', (d: Buffer) => {
                    if (!socket.write(d)) stalled();
                  });
                  upSocket.on('end', () => socket.end());
                  upSocket.resume();
                  socket.pipe(upSocket);
                  this.#finished(req, route, upRes.statusCode ?? 101, started);
                });
                upReq.on('response', (upRes) => {
                  clearTimeout(timer);
                  if (!validStatusLine(upRes)) {
                    upRes.destroy();
                    fail(502, invalid);
                    return;
                  }
                  // the upgrade was refused (403, 400, …): relay the answer as it is
                  upRes.on('error', () => socket.destroy());
                  socket.write(rawHead(upRes, true));
                  upRes.pipe(socket);
                  this.#finished(req, route, upRes.statusCode ?? 0, started);
                });
                upReq.on('error', (err) => {
                  clearTimeout(timer);
                  this.#log.warn('upgrade through the tunnel failed', { cluster, err: err.message });
                  if (!socket.destroyed)
                    fail(502, `tower gateway: the upgrade through cluster "${cluster}"'s agent failed: ${err.message}`);
                });
                socket.on('close', () => {
                  clearTimeout(timer);
                  upReq.destroy();
                });
                req.pipe(upReq);
              },
              (err: Error) => {
                fail(
                  502,
                  `tower gateway: cannot reach the ${this.#what(route.target)} of cluster "${cluster}" through ${member instanceof PeerUpstream ? member.via : 'its agent'}: ${err.message}`,
                );
              },
            );
          },
          (r) => {
            refuse(r, route);
          },
        ),
      (r) => {
        refuse(r, found);
      },
    );
  }
}

/**
 * How a client's request frames its body, or why tower will not read it one way (the member or a
 * server between might read it another): Transfer-Encoding only as the one coding "chunked" (as Go's
 * net/http, which kube-apiserver runs on, accepts), never beside Content-Length.
 */
function requestBody(req: IncomingMessage): Body | string {
  let te: string | undefined;
  let cl: string | undefined;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') {
      if (te !== undefined) return 'a request with more than one Transfer-Encoding header';
      te = raw[i + 1]!;
    } else if (name.length === 14 && name.toLowerCase() === 'content-length') {
      if (cl !== undefined && cl !== raw[i + 1]) return 'a request with differing Content-Length headers';
      cl = raw[i + 1]!;
    }
  }
  if (te !== undefined) {
    if (cl !== undefined) return 'a request with both Content-Length and Transfer-Encoding';
    if (te.trim().toLowerCase() !== 'chunked')
      return `a request with Transfer-Encoding ${JSON.stringify(truncate(te))}: only "chunked" is accepted`;
    return { kind: 'chunked' };
  }
  if (cl === undefined) return { kind: 'none' };
  if (!/^\s*\d{1,15}\s*$/.test(cl)) return `a request with Content-Length ${JSON.stringify(truncate(cl))}`;
  const bytes = Number(cl);
  return bytes > 0 ? { kind: 'length', bytes } : { kind: 'none' };
}

/** the verb of a request, by the path the member sees (the route's), or as the client sent it when there was no route */
function verbOf(req: IncomingMessage, route: Route | Refusal): string {
  return kubernetesVerb(req.method ?? '', 'path' in route ? route.path : (req.url ?? ''));
}

/**
 * A client's request headers as they may travel on: without hop-by-hop ones (and those its
 * Connection names), Host, tower's own X-Tower-* (never a client's word), and what `drop` names.
 */
/**
 * kube-apiserver also takes a bearer token from a WebSocket subprotocol (`base64url.bearer.
 * authorization.k8s.io.<token>`): on a certificate's route that is the client's word about who it
 * is, and it goes with the rest of them. The subprotocols that name a stream protocol stay.
 */
function dropBearerProtocol(out: OutgoingHttpHeaders): void {
  const offered = out['sec-websocket-protocol'];
  if (offered === undefined) return;
  const kept = String(offered)
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p && !p.startsWith(BEARER_PROTOCOL));
  if (kept.length > 0) out['sec-websocket-protocol'] = kept.join(', ');
  else delete out['sec-websocket-protocol'];
}

function forwardedHeaders(req: IncomingMessage, drop: (name: string) => boolean): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  const listed = new Set((req.headers.connection ?? '').split(',').map((s) => s.trim().toLowerCase()));
  for (const [k, v] of Object.entries(req.headers)) {
    if (
      HOP_BY_HOP.has(k) ||
      CLIENT_FRAMING.has(k) ||
      listed.has(k) ||
      k === 'host' ||
      v === undefined ||
      k.startsWith('x-tower-') ||
      drop(k)
    )
      continue;
    out[k] = v;
  }
  return out;
}

/** The Kubernetes verb of a request, as kube-apiserver's RequestInfo names it (for the access log). */
export function kubernetesVerb(method: string, url: string): string {
  const [path = '', query = ''] = url.split('?');
  const parts = path.split('/').filter(Boolean);
  // /api/v1/… and /apis/<group>/<version>/…: what follows names resources; namespaces/<ns>/ scopes them
  let rest = parts[0] === 'api' ? parts.slice(2) : parts[0] === 'apis' ? parts.slice(3) : undefined;
  if (rest && rest[0] === 'namespaces' && rest.length >= 3) rest = rest.slice(2);
  const named = rest !== undefined && rest.length >= 2;
  switch (method) {
    case 'GET':
    case 'HEAD':
      if (/(^|&)watch=(true|1)(&|$)/.test(query)) return 'watch';
      return rest === undefined || named ? 'get' : 'list';
    case 'POST':
      return 'create';
    case 'PUT':
      return 'update';
    case 'PATCH':
      return 'patch';
    case 'DELETE':
      return rest === undefined || named ? 'delete' : 'deletecollection';
    default:
      return method.toLowerCase();
  }
}

/** a status line the gateway can relay as it is: a known code range, a reason without control characters */
function validStatusLine(res: IncomingMessage): boolean {
  const code = res.statusCode ?? 0;
  return code >= 100 && code <= 599 && !/[\x00-\x08\x0a-\x1f\x7f]/.test(res.statusMessage ?? '');
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function downstreamHeaders(up: IncomingMessage): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  const listed = new Set((up.headers.connection ?? '').split(',').map((s) => s.trim().toLowerCase()));
  for (const [k, v] of Object.entries(up.headers)) {
    if (HOP_BY_HOP.has(k) || listed.has(k) || v === undefined) continue;
    out[k] = v;
  }
  return out;
}

function rawHead(res: IncomingMessage, close = false): string {
  let s = `HTTP/1.1 ${res.statusCode} ${res.statusMessage}\r\n`;
  for (let i = 0; i < res.rawHeaders.length; i += 2) {
    // a relayed refusal is framed by closing the connection: Node already removed the chunking
    if (close && /^(connection|transfer-encoding|content-length)$/i.test(res.rawHeaders[i]!)) continue;
    s += `${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}\r\n`;
  }
  if (close) s += 'Connection: close\r\n';
  return s + '\r\n';
}
