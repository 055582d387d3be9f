/**
 * The cluster gateway: one HTTPS port, client certificates from tower's CA required, routing
 * /clusters/<name>/… to that member's kube-apiserver through one of its agents, acting as the
 * certificate's identity (a cluster's own port serves one cluster at its root). Upgrades (SPDY,
 * WebSocket) and watches stream through; no body is buffered.
 *
 * Each request passes the stages in order, each returning its value or a refusal:
 *   route (route.ts) → member (members.ts) → identity (act-as.ts) → headers (the upstream's own)
 *   → forward (forward.ts) or upgrade (upgrade.ts)
 * with admission (admission.ts) before the member is chosen. A refusal becomes a Status in one
 * place (http/status.ts). This file owns the listener and TLS, the order of answers on a
 * connection (conversation.ts), and the drain.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { Server as NetServer } from 'node:net';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { newAuditId } from '../../http/audit-id.ts';
import { rawStatus, sendStatus, type Refusal } from '../../http/status.ts';
import { truncate, type Logger } from '../../observe/log.ts';
import { boundCluster } from '../../pki/ca.ts';
import { certificateFacts } from '../../pki/revocations.ts';
import type { StallBudget } from '../../tunnel/stall-budget.ts';
import { closeServers, ConnectionGuard, listenOn } from '../connection-guard.ts';
import { certificateIdentity, ImpersonationCheck, type GatewayIdentity } from '../identity.ts';
import type { ProxyMetrics } from '../metrics.ts';
import { PEER_API, PEER_HEADERS, peerOf } from '../peer-protocol.ts';
import type { Peers } from '../peers.ts';
import type { RevocationWatch } from '../revocation-watch.ts';
import type { SessionRegistry } from '../registry.ts';
import type { ActAs } from '../upstream.ts';
import { actAs } from './act-as.ts';
import { Admission, type InflightRequests } from './admission.ts';
import { ClientCertificateCheck } from './client-certificate.ts';
import { Conversations } from './conversation.ts';
import { Forwarder } from './forward.ts';
import { kubernetesResource, kubernetesVerb, requestBody } from './framing.ts';
import { Members, type Way } from './members.ts';
import { isRefusal, refusals } from './refusals.ts';
import { route as routeOf, type ClientCertificate, type Route, type RouteRules, type Target } from './route.ts';
import { Upgrader } from './upgrade.ts';

const HEADERS_TIMEOUT_MS = 30_000;
export const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;
/** a connection that starts no request by then (after TLS) is closed */
const FIRST_REQUEST_TIMEOUT_MS = 30_000;
const KEEP_ALIVE_TIMEOUT_MS = 60_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;
export const DEFAULT_MAX_CONNECTIONS = 10_000;
export const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 1_000;

export interface GatewayLimits {
  /** requests in flight per cluster, watches and upgrades not counted (as kube-apiserver's --max-requests-inflight) */
  maxRequestsInflight?: number;
  /** what answers whose clients stopped reading may hold, in all, before new requests are answered 429 */
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

/** What every gateway of a proxy shares: who requests act as, certificates, limits, logging. */
export type GatewayPolicy = Pick<GatewayOptions, 'identity' | 'allowUnboundCertificates' | 'limits' | 'accessLog'>;
/** ... and the state they share: verdicts, requests in flight per cluster, metrics */
export type GatewayShared = GatewayPolicy &
  Pick<GatewayOptions, 'impersonation' | 'inflight' | 'stalled' | 'metrics' | 'draining' | 'peers' | 'revocations'>;

export interface GatewayOptions {
  registry: SessionRegistry;
  /** whether the store knows the cluster (the proxy keeps this from the store's watch) */
  knows: (name: string) => boolean;
  /** HTTPS with client certificates from this CA required; without it, plain HTTP and no client check */
  tls?: { caPem: string; cert: string; key: string };
  /** serves this one cluster at the root (a cluster's own port) instead of /clusters/<name>/ */
  cluster?: string;
  /** what the requests reach in the member: its kube-apiserver (default) or its ks-apiserver */
  target?: Target;
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
  /** revoked client certificates: refused at every request, their open connections closed */
  revocations?: RevocationWatch;
  /** this replica drains: every answer closes its connection */
  draining?: () => boolean;
  log: Logger;
}

/** Where a request goes once the member and identity stages are done. */
interface Ready {
  way: Way;
  actAs: ActAs;
}

/** A routed request: where it goes, and this replica's way to the member when it holds an agent. */
interface Found {
  route: Route;
  local: Way | undefined;
}

export class Gateway {
  readonly server: Server | HttpsServer;
  /** what listens: the HTTP server itself, or a TCP listener that hands it connections once they speak */
  #listener: NetServer;
  #opts: GatewayOptions;
  #guard: ConnectionGuard;
  #impersonation: ImpersonationCheck;
  #rules: RouteRules;
  #members: Members;
  #admission: Admission;
  #forwarder: Forwarder;
  #upgrader: Upgrader;
  /** connections from other replicas with a request in flight: they send one at a time */
  #peerBusy = new WeakSet<Duplex>();
  /** what each client connection is still owed, so that tower's own writes keep the answers' order */
  #conversations = new Conversations();
  #certificates = new WeakMap<TLSSocket, ClientCertificate>();
  /** connections with a user's certificate, for closing those a revocation cuts off */
  #withCertificate = new Set<TLSSocket>();
  #unwatchRevocations: (() => void) | undefined;
  #certificateCheck: ClientCertificateCheck | undefined;
  /** requests in flight (watches not counted): with the upgraded connections, what a drain waits for */
  #active = 0;
  #log: Logger;

  constructor(opts: GatewayOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    const limits = opts.limits ?? DEFAULT_GATEWAY_LIMITS;
    this.#impersonation = opts.impersonation ?? new ImpersonationCheck();
    this.#rules = {
      cluster: opts.cluster,
      target: opts.target ?? 'kubernetes',
      tls: !!opts.tls,
      allowUnboundCertificates: !!opts.allowUnboundCertificates,
      actsAsCertificate: (target) => this.#actsAsCertificate(target),
      knows: opts.knows,
      signature: opts.peers?.signature,
      revoked: opts.revocations ? (facts) => opts.revocations!.refusal(facts) : undefined,
      log: opts.log,
    };
    this.#unwatchRevocations = opts.revocations?.onChange(() => this.#closeRevoked());
    this.#members = new Members({ registry: opts.registry, peers: opts.peers, metrics: opts.metrics });
    this.#admission = new Admission({
      inflight: opts.inflight,
      maxRequestsInflight: limits.maxRequestsInflight,
      stalled: opts.stalled,
      metrics: opts.metrics,
    });
    const stage = { admission: this.#admission, requestTimeoutMs: limits.requestTimeoutMs, log: opts.log };
    this.#forwarder = new Forwarder(stage);
    this.#upgrader = new Upgrader(stage);
    const timeouts = { headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: 0, keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS };
    this.#guard = new ConnectionGuard({
      maxTotal: limits.maxConnections,
      maxPerAddress: limits.maxConnectionsPerAddress,
      firstRequestMs: FIRST_REQUEST_TIMEOUT_MS,
      what: opts.cluster ? `port of cluster "${opts.cluster}"` : 'gateway',
      log: opts.log,
    });
    if (opts.tls) {
      this.#certificateCheck = new ClientCertificateCheck(opts.tls.caPem);
      this.server = createHttpsServer({
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
    this.server.on('connect', (req, socket) => this.#onConnect(req, socket));
    this.server.on('clientError', (err, socket) => this.#onClientError(err, socket));
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
    this.#unwatchRevocations?.();
    this.#guard.close();
    return closeServers(this.#listener, this.server);
  }

  /** requests in flight and upgraded connections (watches are handed back instead) */
  get busy(): number {
    return this.#active + this.#upgrader.upgraded.size;
  }

  /** Drain: no new connections, idle ones close; what is in flight carries on. */
  stopAccepting(): void {
    this.#listener.close();
    this.server.closeIdleConnections();
  }

  /** Ends every watch at its next event boundary, so that its client resumes elsewhere from the last event it got. */
  handBackWatches(): number {
    const watches = this.#forwarder.watches;
    const n = watches.size;
    for (const handBack of [...watches]) handBack();
    return n;
  }

  #actsAsCertificate(target: Target): boolean {
    return target !== 'kubesphere' && !!this.#opts.tls && (this.#opts.identity ?? 'certificate') === 'certificate';
  }

  /** What the connection's certificate says, read once per connection. */
  #certificate(socket: TLSSocket): ClientCertificate {
    let c = this.#certificates.get(socket);
    if (!c) {
      const cert = socket.getPeerCertificate(true);
      const problem = this.#certificateCheck!.problem(cert.raw);
      // a replica's certificate means something only where replicas exist, and only on the shared gateway;
      // anywhere else it is a user's like any other, and revocable
      const replica = !problem && this.#opts.peers && !this.#opts.cluster ? peerOf(cert.subjectaltname) : undefined;
      c = problem
        ? { problem, bound: undefined, identity: undefined }
        : {
            bound: boundCluster(cert.subjectaltname),
            identity: this.#actsAsCertificate(this.#rules.target) ? certificateIdentity(cert) : undefined,
            replica,
            facts: replica ? undefined : certificateFacts(cert, this.#certificateCheck!.caNotAfter),
          };
      this.#certificates.set(socket, c);
      if (c.facts) {
        this.#withCertificate.add(socket);
        socket.once('close', () => this.#withCertificate.delete(socket));
      }
    }
    return c;
  }

  /**
   * A revocation, or a certificate's expiry, also ends what is open: watches, exec and port-forward
   * sessions, kept-alive connections. Run after every read of the list.
   */
  #closeRevoked(): void {
    const revocations = this.#opts.revocations!;
    for (const socket of this.#withCertificate) {
      const facts = this.#certificates.get(socket)?.facts;
      const why = facts && revocations.refusal(facts);
      if (!why) continue;
      this.#log.info('closed a connection whose client certificate may no longer be used', {
        user: facts!.user,
        serial: facts!.serial,
        remote: socket.remoteAddress,
        why,
      });
      socket.destroy();
    }
  }

  /** The route stage, and this replica's own agent for it when it holds one. */
  #route(req: IncomingMessage): Found | Refusal {
    const cert = this.#opts.tls ? this.#certificate(req.socket as TLSSocket) : undefined;
    const head = { method: req.method ?? '', url: req.url ?? '', headers: req.headers };
    const route = routeOf(head, cert, this.#rules);
    if (isRefusal(route)) return route;
    const local = this.#members.local(route);
    if (local && isRefusal(local)) return local;
    return { route, local };
  }

  /**
   * The member and identity stages: the way to the member, and whom the request acts as there. A
   * value at once when this replica holds an agent and the member need not be asked anything.
   */
  #toMember(req: IncomingMessage, found: Found): Ready | Refusal | Promise<Ready | Refusal> {
    if (found.local) return this.#actingAs(req, found.route, found.local);
    return this.#members
      .elsewhere(found.route, req.method ?? '')
      .then((way) => (isRefusal(way) ? way : this.#actingAs(req, found.route, way)));
  }

  #actingAs(req: IncomingMessage, route: Route, way: Way): Ready | Refusal | Promise<Ready | Refusal> {
    const who = actAs(req, route, way.current, this.#impersonation);
    const ready = (w: { actAs: ActAs } | Refusal) => (isRefusal(w) ? w : { way, actAs: w.actAs });
    return who instanceof Promise ? who.then(ready) : ready(who);
  }

  #onRequest(req: IncomingMessage, res: ServerResponse, continueOutOfTurn = false): void {
    this.#guard.seen(req.socket);
    const conversation = this.#conversations.of(req.socket);
    // pipelined after a refusal that ends the connection: not this client's request, and never answered
    if (conversation.ended) {
      req.resume();
      return;
    }
    // every answer carries it, the gateway's own refusals too, so that the client can join it with
    // the access log line (a forwarding replica's replaces it once routed)
    let auditId = newAuditId();
    // a body that turns out not to be HTTP (a bad chunk): what was forwarded of it is cut off, and
    // its answer is a 400, the connection's last
    conversation.owe(req, res, (err: NodeJS.ErrnoException) => {
      this.#forwarder.bodyBroke(req);
      res.shouldKeepAlive = false;
      if (!res.headersSent && !res.destroyed) sendStatus(res, refusals.malformedBody(err), auditId);
      else res.destroy();
    });
    // a draining replica's clients reconnect, through their load balancer, to another one
    if (this.#opts.draining?.()) {
      res.shouldKeepAlive = false;
      conversation.endHere();
    }
    if (this.#opts.peers && this.#opts.tls && !this.#opts.cluster && !this.#oneAtATime(req, res)) return;
    // the replicas' own API; a request another replica forwarded (it is signed) is a member's, whatever its path
    if (!this.#opts.cluster && req.url?.startsWith(PEER_API) && req.headers[PEER_HEADERS.signature] === undefined) {
      this.#onPeerApi(req, res);
      return;
    }
    const started = performance.now();
    const refuse = (r: Refusal) => {
      this.#log.debug(1, 'gateway refused a request', { url: req.url, status: r.status, why: r.message });
      if (!res.headersSent && !res.destroyed) sendStatus(res, r, auditId);
      req.resume();
    };
    const found = this.#route(req);
    const routed = isRefusal(found) ? found : found.route;
    auditId = auditIdOf(found, auditId);
    // once per request: the in-flight limit and the metrics both go by it
    const verb = verbOf(req, routed);
    res.once('close', () => this.#finished(req, routed, res.statusCode, started, auditId, verb));
    if (continueOutOfTurn) {
      res.shouldKeepAlive = false;
      conversation.refuse();
      refuse(refusals.continuePipelined());
      return;
    }
    if (isRefusal(found)) {
      refuse(found);
      return;
    }
    const body = requestBody(req.rawHeaders);
    if (typeof body === 'string') {
      // the bytes after an ambiguous head are not to be read as anything: the connection ends with this answer
      res.shouldKeepAlive = false;
      conversation.refuse();
      refuse(refusals.ambiguousFraming(body));
      return;
    }
    const full = this.#admission.admit(res, found.route, verb);
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
    const go = (ready: Ready | Refusal) => {
      if (isRefusal(ready)) refuse(ready);
      else this.#forwarder.forward(req, res, found.route, ready.way, ready.actAs, body, verb);
    };
    const ready = this.#toMember(req, found);
    // a lookup that fails is an agent not found: nothing may reject unhandled here
    if (ready instanceof Promise) void ready.then(go, () => go(this.#members.noAgent(found.route, req.method ?? '')));
    else go(ready);
  }

  /**
   * Another replica sends one request at a time on a connection and waits for its answer: a request
   * that arrives before the previous answer has ended did not come from that replica's gateway
   * (bytes smuggled in a body, say). The connection ends and nothing of it is forwarded.
   */
  #oneAtATime(req: IncomingMessage, res: ServerResponse): boolean {
    const socket = req.socket;
    const replica = this.#certificate(socket as TLSSocket).replica;
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
    const cert = this.#opts.tls ? this.#certificate(req.socket as TLSSocket) : undefined;
    if (!cert?.replica || !this.#opts.peerApi) {
      sendStatus(res, refusals.peerApiOnly());
      req.resume();
      return;
    }
    this.#opts.peerApi(req, res);
  }

  /**
   * Counts a request that is done (an upgrade once answered) and logs it with --access-log. The
   * cluster label is a routed cluster's only: never a name a client made up. `path` is as the
   * member sees it (the route's), or as the client sent it when there was no route. The user is
   * whom the request acted as: the certificate's, or the one a forwarding replica verified.
   */
  #finished(
    req: IncomingMessage,
    route: Route | Refusal,
    status: number,
    started: number,
    auditId: string,
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
    const cert = this.#opts.tls ? this.#certificates.get(req.socket as TLSSocket) : undefined;
    const routed = 'path' in route ? route : undefined;
    const who = routed?.identity ?? (cert && typeof cert.identity === 'object' ? cert.identity : undefined);
    const { resource, namespace } = routed ? kubernetesResource(routed.path) : {};
    this.#log.info('access', {
      cluster,
      user: who?.user,
      groups: who?.groups.join(','),
      as: req.headers['impersonate-user'],
      verb,
      resource,
      namespace,
      path,
      status,
      duration: `${Math.round(seconds * 1000)}ms`,
      remote: req.socket.remoteAddress,
      fromReplica: routed?.fromPeer,
      auditId,
    });
  }

  #onConnect(req: IncomingMessage, socket: Duplex): void {
    this.#guard.seen(socket);
    socket.on('error', () => socket.destroy());
    const conversation = this.#conversations.of(socket);
    conversation.closeWithSocket();
    conversation.endHere();
    conversation.afterAnswers(() => {
      this.#log.debug(1, 'gateway refused a CONNECT', { url: req.url });
      endWith(socket, refusals.connectNotServed());
    });
  }

  #onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    this.#log.debug(1, 'gateway dropped a malformed request', { err: err.message });
    // the answers to requests read before these bytes go first; then this 400, and the connection ends
    const conversation = this.#conversations.of(socket);
    if (conversation.ended) return;
    conversation.refuse();
    // in a request's body: that request's answer is the 400 (see #onRequest)
    if (conversation.bodyBroke(err)) return;
    conversation.afterAnswers(() => endWith(socket, refusals.malformedRequest(err)));
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
    const found = this.#route(req);
    const auditId = auditIdOf(found);
    const refuse = (r: Refusal, route?: Route) => {
      this.#log.debug(1, 'gateway refused an upgrade', { url: req.url, status: r.status, why: r.message });
      if (socket.writable) socket.end(rawStatus(r, auditId));
      this.#finished(req, route ?? r, r.status, started, auditId);
    };
    if (isRefusal(found)) {
      refuse(found);
      return;
    }
    const { route } = found;
    const full = this.#admission.stalled(route.cluster);
    if (full) {
      refuse(full, route);
      return;
    }
    const body = requestBody(req.rawHeaders);
    if (typeof body === 'string' || body.kind !== 'none') {
      const what = typeof body === 'string' ? body : `a ${body.kind === 'length' ? 'Content-Length' : 'chunked'} body`;
      refuse(refusals.upgradeWithBody(what), route);
      return;
    }
    const go = (ready: Ready | Refusal) => {
      if (isRefusal(ready)) {
        refuse(ready, route);
        return;
      }
      this.#upgrader.upgrade(req, socket, head, route, ready.way, ready.actAs, {
        refuse: (r) => refuse(r, route),
        answered: (status) => this.#finished(req, route, status, started, auditId),
      });
    };
    const ready = this.#toMember(req, found);
    // a lookup that fails is an agent not found: nothing may reject unhandled here
    if (ready instanceof Promise) void ready.then(go, () => go(this.#members.noAgent(route, req.method ?? '')));
    else go(ready);
  }
}

/**
 * the verb of a request, by the path the member sees (the route's), or as the client sent it when there was no route
 */
function verbOf(req: IncomingMessage, route: Route | Refusal): string {
  return kubernetesVerb(req.method ?? '', 'path' in route ? route.path : (req.url ?? ''));
}

/**
 * The request's Audit-ID: the one a forwarding replica chose (a peer route), else a fresh one, kept
 * on the route for the upstream to send on. Never the client's.
 */
function auditIdOf(found: Found | Refusal, fresh = newAuditId()): string {
  if (isRefusal(found)) return fresh;
  return (found.route.auditId ??= fresh);
}

/** Writes a Status straight to a socket that has no ServerResponse, and ends the connection with it. */
function endWith(socket: Duplex, r: Refusal): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.end(rawStatus(r), () => socket.destroy());
}
