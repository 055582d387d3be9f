import { createServer as createHttpServer, request as httpRequest, STATUS_CODES, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { Logger } from '../observe/log.ts';
import { boundCluster } from '../pki/ca.ts';
import { clusterNameProblem } from '../store/names.ts';
import type { AgentSession } from '../tunnel/server.ts';
import type { SessionRegistry } from './registry.ts';
import { MemberApiserver, MemberKubesphere, type Upstream } from './upstream.ts';

const HEADERS_TIMEOUT_MS = 30_000;
/** agents tried for one request without a body before the gateway answers 502 */
const MAX_ATTEMPTS = 3;
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings']);
const CLUSTER_PATH = /^\/clusters\/([^/?]*)(\/[^?]*)?(\?.*)?$/;

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
  log: Logger;
}

/**
 * The cluster gateway: one HTTPS port, client certificates from tower's CA required, routing
 * /clusters/<name>/… to that member's kube-apiserver through one of its agents. Upgrades
 * (SPDY, WebSocket) and watches stream through; no body is buffered.
 */
export class Gateway {
  readonly server: Server | HttpsServer;
  #opts: GatewayOptions;
  #members = new WeakMap<AgentSession, Upstream>();
  /** the cluster each client connection's certificate is bound to ('' for none) */
  #bound = new WeakMap<TLSSocket, string>();
  #log: Logger;

  constructor(opts: GatewayOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    const timeouts = { headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: 0, keepAliveTimeout: 60_000 };
    if (opts.tls) {
      const https = createHttpsServer({
        cert: opts.tls.cert,
        key: opts.tls.key,
        ca: opts.tls.caPem,
        requestCert: true,
        // verified below, so that a missing or foreign certificate gets a readable 401
        rejectUnauthorized: false,
        ALPNProtocols: ['http/1.1'],
        ...timeouts,
      });
      https.on('tlsClientError', (err, socket) => {
        this.#log.debug(1, 'gateway TLS handshake failed', { remote: socket.remoteAddress, err: err.message });
        socket.destroy();
      });
      this.server = https;
    } else {
      this.server = createHttpServer(timeouts);
    }
    this.server.on('request', (req, res) => this.#onRequest(req, res));
    this.server.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
    this.server.on('clientError', (err, socket) => {
      this.#log.debug(1, 'gateway dropped a malformed request', { err: err.message });
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      socket.destroy();
    });
  }

  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve((this.server.address() as { port: number }).port);
      });
    });
  }

  /** Serves a new certificate to new connections (e.g. when a load balancer's address joins the SANs). */
  setCertificate(cert: string, key: string): void {
    if (!this.#opts.tls) return;
    this.#opts.tls = { ...this.#opts.tls, cert, key };
    (this.server as HttpsServer).setSecureContext({ cert, key, ca: this.#opts.tls.caPem });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  /** Checks the client certificate and the route; answers the problem itself when there is one. */
  #route(req: IncomingMessage): { member: Upstream; path: string; cluster: string } | { status: number; reason: string; message: string } {
    const socket = req.socket as TLSSocket;
    if (this.#opts.tls && !socket.authorized) {
      const why = socket.authorizationError ? String(socket.authorizationError) : 'no client certificate';
      return { status: 401, reason: 'Unauthorized', message: `tower gateway: a client certificate signed by tower's CA is required (${why}); get a kubeconfig with: tower kubeconfig <cluster>` };
    }
    const bound = this.#opts.tls ? this.#boundCluster(socket) : undefined;
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
      return { status: 404, reason: 'NotFound', message: `tower gateway: no route for ${JSON.stringify(req.url)}; paths look like /clusters/<name>/api/...` };
    }
    const problem = clusterNameProblem(name);
    if (problem) return { status: 400, reason: 'BadRequest', message: `tower gateway: invalid cluster name ${JSON.stringify(name)}: ${problem}` };
    if (!this.#opts.knows(name)) return { status: 404, reason: 'NotFound', message: `cluster "${name}" not found in tower (register it with: tower token ${name})` };
    if (bound && bound !== name) {
      return { status: 403, reason: 'Forbidden', message: `tower gateway: this client certificate is for cluster "${bound}", not "${name}" (get one with: tower kubeconfig ${name})` };
    }
    const member = this.#member(this.#opts.registry.pick(name));
    if (!member) return { status: 503, reason: 'ServiceUnavailable', message: `cluster "${name}" has no agent connected to tower (start one with the command that "tower token ${name}" prints)` };
    if (!member.hostPort || member.hostPort.startsWith(':')) return { status: 502, reason: 'BadGateway', message: `the agent of cluster "${name}" announced no ${this.#opts.target === 'kubesphere' ? 'ks-apiserver (KubeSphereSvcHost; agent flag --kubesphere-service)' : 'kube-apiserver'}` };
    return { member, path, cluster: name };
  }

  #boundCluster(socket: TLSSocket): string | undefined {
    let b = this.#bound.get(socket);
    if (b === undefined) {
      b = boundCluster(socket.getPeerCertificate().subjectaltname) ?? '';
      this.#bound.set(socket, b);
    }
    return b || undefined;
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const route = this.#route(req);
    if ('status' in route) {
      this.#log.debug(1, 'gateway refused a request', { url: req.url, status: route.status, why: route.message });
      sendStatus(res, route.status, route.reason, route.message);
      req.resume();
      return;
    }
    res.on('close', () => { if (!res.writableFinished) req.destroy(); });
    this.#forward(req, res, route.member, route.path, route.cluster, new Set());
  }

  /**
   * Sends the request through `member`. A request without a body that fails before any answer
   * (the agent died, the channel was refused) is retried through another agent of the cluster.
   */
  #forward(req: IncomingMessage, res: ServerResponse, member: Upstream, path: string, cluster: string, tried: Set<AgentSession>): void {
    tried.add(member.session);
    const bodyless = req.headers['transfer-encoding'] === undefined && (req.headers['content-length'] ?? '0') === '0';
    // the fields object is built only when someone reads it: this runs for every request
    if (this.#log.enabled(4)) this.#log.debug(4, 'forward', { cluster, method: req.method, path, session: member.session.id });
    const upstream = httpRequest({ agent: member.pool, method: req.method, path, headers: upstreamHeaders(req, member) });
    let answered = false;
    upstream.on('response', (up) => {
      answered = true;
      res.writeHead(up.statusCode ?? 502, up.statusMessage, downstreamHeaders(up));
      // a streamed answer (a watch) must reach the client before its first event; one with a
      // length leaves with its body, in one record
      if (up.headers['content-length'] === undefined) res.flushHeaders();
      // pipe, not pipeline: the promise version costs an AbortController (and DOMException) per request
      up.on('error', () => res.destroy());
      up.pipe(res);
    });
    upstream.on('error', (err) => {
      if (answered || res.headersSent) { res.destroy(); return; }
      const next = bodyless && tried.size < MAX_ATTEMPTS && !res.destroyed ? this.#member(this.#opts.registry.pick(cluster, tried)) : undefined;
      if (next) {
        this.#log.debug(1, 'retrying a request through another agent', { cluster, session: member.session.id, err: err.message });
        this.#forward(req, res, next, path, cluster, tried);
        return;
      }
      sendStatus(res, 502, 'BadGateway', `tower gateway: cannot reach the ${this.#what} of cluster "${cluster}" through its agent: ${err.message}`);
    });
    res.on('close', () => { if (!res.writableFinished) upstream.destroy(); });
    if (bodyless) {
      req.resume();
      upstream.end();
    } else {
      req.on('error', () => upstream.destroy());
      req.pipe(upstream);
    }
  }

  get #what(): string {
    return this.#opts.target === 'kubesphere' ? 'ks-apiserver' : 'kube-apiserver';
  }

  #member(session: AgentSession | undefined): Upstream | undefined {
    if (!session) return undefined;
    let member = this.#members.get(session);
    if (!member) {
      member = this.#opts.target === 'kubesphere' ? new MemberKubesphere(session) : new MemberApiserver(session);
      this.#members.set(session, member);
    }
    return member;
  }

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const route = this.#route(req);
    socket.on('error', () => socket.destroy());
    if ('status' in route) {
      this.#log.debug(1, 'gateway refused an upgrade', { url: req.url, status: route.status, why: route.message });
      socket.end(rawStatus(route.status, route.reason, route.message));
      return;
    }
    const { member, path, cluster } = route;
    if (this.#log.enabled(4)) this.#log.debug(4, 'forward upgrade', { cluster, method: req.method, path, upgrade: req.headers.upgrade });
    // upgraded connections get a channel of their own, never a pooled one
    member.connect().then((tls) => {
      const headers = upstreamHeaders(req, member);
      headers.connection = 'Upgrade';
      headers.upgrade = req.headers.upgrade;
      const upReq = httpRequest({ createConnection: () => tls, method: req.method, path, headers });
      upReq.on('upgrade', (upRes, upSocket, upHead) => {
        socket.write(rawHead(upRes));
        if (upHead.length) socket.write(upHead);
        if (head.length) upSocket.write(head);
        upSocket.on('error', () => socket.destroy());
        socket.on('close', () => upSocket.destroy());
        upSocket.on('close', () => socket.destroy());
        upSocket.pipe(socket);
        socket.pipe(upSocket);
      });
      upReq.on('response', (upRes) => {
        // the upgrade was refused (403, 400, …): relay the answer as it is
        socket.write(rawHead(upRes, true));
        upRes.pipe(socket);
      });
      upReq.on('error', (err) => {
        this.#log.warn('upgrade through the tunnel failed', { cluster, err: err.message });
        socket.destroy();
      });
      socket.on('close', () => upReq.destroy());
      req.pipe(upReq);
    }, (err: Error) => {
      socket.end(rawStatus(502, 'BadGateway', `tower gateway: cannot reach the ${this.#what} of cluster "${cluster}" through its agent: ${err.message}`));
    });
  }
}

function safeDecode(s: string): string {
  try { return decodeURIComponent(s); } catch { return s; }
}

function upstreamHeaders(req: IncomingMessage, member: Upstream): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  const listed = new Set((req.headers.connection ?? '').split(',').map((s) => s.trim().toLowerCase()));
  const dropAuth = !member.keepsClientAuthorization;
  for (const [k, v] of Object.entries(req.headers)) {
    // the caller authenticated to tower with its certificate; upstream credentials are the agent's
    if (HOP_BY_HOP.has(k) || listed.has(k) || (dropAuth && k === 'authorization') || k === 'host' || v === undefined) continue;
    out[k] = v;
  }
  out.host = member.hostHeader;
  if (member.authorization) out.authorization = member.authorization;
  return out;
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

/** A metav1.Status, so that kubectl prints the message as the server's own. */
function statusBody(code: number, reason: string, message: string): string {
  return JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code }) + '\n';
}

/** The same, as a whole HTTP response on a socket that was to be upgraded. */
function rawStatus(code: number, reason: string, message: string): string {
  const body = statusBody(code, reason, message);
  return `HTTP/1.1 ${code} ${STATUS_CODES[code] ?? reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

function sendStatus(res: ServerResponse, code: number, reason: string, message: string): void {
  const body = statusBody(code, reason, message);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}
