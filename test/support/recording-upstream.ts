import { writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { stringify } from 'yaml';
import { CertificateAuthority } from '../../src/pki/ca.ts';
import { decodeChunked } from './raw-http.ts';

/** which of the member's two servers a request reached */
export type RecorderServer = 'kube-apiserver' | 'ks-apiserver';
/** how a request proved itself to the member: the agent's bearer token, the agent's client certificate, or not at all */
export type MemberAuth = 'token' | 'cert' | 'none';

/** One request as it arrived at the member's side of the wire. */
export interface Received {
  kind: 'request';
  server: RecorderServer;
  /** numbered per recorder, so that what came on one connection can be told apart */
  connection: number;
  method: string;
  url: string;
  httpVersion: string;
  auth: MemberAuth;
  authorization: string | undefined;
  impersonateUser: string[];
  impersonateGroup: string[];
  /** other Impersonate-* header names (uid, extras) */
  impersonateOther: string[];
  /** names of X-Tower-* headers: tower's own, between replicas, never meant for a member */
  towerHeaders: string[];
  /** trailer field names, lower case (an identity header must never ride in one) */
  trailers: string[];
  body: Buffer;
  /** the body ended as its framing says; false: the connection ended first */
  complete: boolean;
  /** how tower framed the body: its Content-Length and Transfer-Encoding headers as they arrived */
  framing: string;
  /** it arrived while the previous request on its connection was still unanswered: something pipelined into the member */
  overlapped: boolean;
  upgrade: boolean;
  /** an upgrade's bytes after its head and announced body, before the answer: nothing should follow a refused upgrade */
  trailing: Buffer;
}

/** Bytes on a connection that the member could not parse as HTTP. */
export interface Garbage {
  kind: 'garbage';
  server: RecorderServer;
  connection: number;
  code: string;
  /** what arrived, as latin1, cut short */
  bytes: string;
}

/** A SubjectAccessReview tower asked (a client's own Impersonate-*): tower's, never a client's request. */
export interface Review {
  kind: 'review';
  connection: number;
  auth: MemberAuth;
  /** whom the review asks about */
  user: string;
  /** Impersonate-* headers on the review itself: there must be none */
  impersonated: boolean;
}

export type RecorderEvent = Received | Garbage | Review;

const BODY_LIMIT_BYTES = 1024 * 1024;
const SHOWN_BYTES = 300;
/** how long an upgrade waits for the body its head announces before it is answered */
const UPGRADE_BODY_WAIT_MS = 500;
/** and then for anything that follows, which must be nothing */
const UPGRADE_SETTLE_MS = 50;
/** idle connections stay, so that tower's pool never races a keep-alive close; dropConnections() starts afresh when a test asks */
const KEEP_ALIVE_MS = 600_000;
const REVIEWS = '/apis/authorization.k8s.io/v1/subjectaccessreviews';

/** a connection's number, and how many requests on it are still unanswered */
interface ConnectionState { id: number; open: number }

/**
 * A member cluster that records everything reaching it, on every connection: an HTTPS
 * "kube-apiserver" that knows the agent by its bearer token or client certificate, and a
 * plain-HTTP "ks-apiserver". Each request is answered 200 with JSON (and X-Recorder-* headers, for
 * HEAD) naming the request target and Impersonate-User it saw, framed by Content-Length, kept
 * alive. Nothing is refused here: what tower lets through is what a test asserts on.
 */
export class RecordingUpstream {
  readonly events: RecorderEvent[] = [];
  readonly token = 'recording-upstream-token-' + Math.random().toString(36).slice(2);
  caPem = '';
  kubePort = 0;
  ksPort = 0;
  /** when the last byte arrived: a test waits for quiet before it judges */
  lastActivity = 0;
  #clientCert = '';
  #clientKey = '';
  #kube: Server;
  #ks: Server;
  #connections = new WeakMap<Duplex, ConnectionState>();
  #nextConnection = 1;
  #upgraded = new Set<Duplex>();

  private constructor(kube: Server, ks: Server) {
    this.#kube = kube;
    this.#ks = ks;
  }

  static async start(): Promise<RecordingUpstream> {
    const caPair = await CertificateAuthority.create('recording-upstream-ca');
    const ca = await CertificateAuthority.load(caPair, 'recording-upstream');
    const serving = await ca.issueServer(['127.0.0.1', 'localhost']);
    const client = await ca.issueClient('tower-agent', []);
    // lenient only where it would hide a smuggled request: no Host is still a request, and is recorded
    const http = { requireHostHeader: false, keepAliveTimeout: KEEP_ALIVE_MS, requestTimeout: 0 };
    const kube = createHttpsServer({ ...http, cert: serving.cert, key: serving.key, ca: caPair.cert, requestCert: true, rejectUnauthorized: false });
    const ks = createHttpServer(http);
    const r = new RecordingUpstream(kube, ks);
    r.caPem = caPair.cert;
    r.#clientCert = client.cert;
    r.#clientKey = client.key;
    for (const [server, s] of [['kube-apiserver', kube], ['ks-apiserver', ks]] as const) {
      s.on('request', (req, res) => r.#onRequest(server, req, res));
      s.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => r.#onUpgrade(server, req, socket, head));
      s.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Duplex) => r.#onClientError(server, err, socket));
    }
    r.kubePort = await listen(kube);
    r.ksPort = await listen(ks);
    return r;
  }

  get kubeHostPort(): string { return `127.0.0.1:${this.kubePort}`; }
  get ksHostPort(): string { return `127.0.0.1:${this.ksPort}`; }

  /** The agent's kubeconfig for this kube-apiserver: a bearer token (as a ServiceAccount's) or a client certificate. */
  writeKubeconfig(path: string, how: 'token' | 'cert'): string {
    const user = how === 'token'
      ? { token: this.token }
      : { 'client-certificate-data': Buffer.from(this.#clientCert).toString('base64'), 'client-key-data': Buffer.from(this.#clientKey).toString('base64') };
    writeFileSync(path, stringify({
      apiVersion: 'v1', kind: 'Config',
      clusters: [{ name: 'member', cluster: { server: `https://${this.kubeHostPort}`, 'certificate-authority-data': Buffer.from(this.caPem).toString('base64') } }],
      users: [{ name: 'tower-agent', user }],
      contexts: [{ name: 'member', context: { cluster: 'member', user: 'tower-agent' } }],
      'current-context': 'member',
    }), { mode: 0o600 });
    return path;
  }

  /** Closes every connection to the member: tower's pooled channels start afresh, so that one round cannot leak into the next. */
  dropConnections(): void {
    for (const s of [this.#kube, this.#ks]) s.closeAllConnections();
    for (const socket of this.#upgraded) socket.destroy();
    this.#upgraded.clear();
  }

  close(): Promise<void> {
    this.dropConnections();
    const closed = [this.#kube, this.#ks].map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    return Promise.all(closed).then(() => undefined);
  }

  #state(socket: Duplex): ConnectionState {
    let c = this.#connections.get(socket);
    if (!c) {
      c = { id: this.#nextConnection++, open: 0 };
      this.#connections.set(socket, c);
      socket.on('data', () => { this.lastActivity = Date.now(); });
    }
    return c;
  }

  #auth(req: IncomingMessage): MemberAuth {
    if (req.headers.authorization === `Bearer ${this.token}`) return 'token';
    return (req.socket as TLSSocket).authorized ? 'cert' : 'none';
  }

  #received(server: RecorderServer, req: IncomingMessage, connection: ConnectionState): Received {
    const distinct = req.headersDistinct;
    return {
      kind: 'request', server, connection: connection.id, method: req.method ?? '', url: req.url ?? '', httpVersion: req.httpVersion,
      auth: this.#auth(req), authorization: req.headers.authorization,
      impersonateUser: distinct['impersonate-user'] ?? [],
      impersonateGroup: distinct['impersonate-group'] ?? [],
      impersonateOther: Object.keys(distinct).filter((k) => k.startsWith('impersonate-') && k !== 'impersonate-user' && k !== 'impersonate-group'),
      towerHeaders: Object.keys(distinct).filter((k) => k.startsWith('x-tower-')),
      trailers: [], body: Buffer.alloc(0), complete: false, framing: framingOf(req), overlapped: connection.open > 0, upgrade: false, trailing: Buffer.alloc(0),
    };
  }

  #onRequest(server: RecorderServer, req: IncomingMessage, res: ServerResponse): void {
    this.lastActivity = Date.now();
    const connection = this.#state(req.socket);
    const seen = this.#received(server, req, connection);
    const review = server === 'kube-apiserver' && req.method === 'POST' && seen.url.split('?')[0] === REVIEWS;
    // recorded as its head arrives: a request whose body never ends still reached the member
    if (!review) this.events.push(seen);
    connection.open++;
    // answered once its last byte is handed on ('finish'), or the connection is gone ('close'), whichever is first
    let answered = false;
    const done = () => { if (!answered) { answered = true; connection.open--; } };
    res.once('finish', done);
    res.once('close', done);
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (d: Buffer) => {
      this.lastActivity = Date.now();
      if (size < BODY_LIMIT_BYTES) { chunks.push(d); size += d.length; seen.body = Buffer.concat(chunks); }
    });
    req.on('error', () => undefined);
    req.on('end', () => {
      seen.complete = true;
      seen.trailers = Object.keys(req.trailers);
      if (review) this.#review(res, seen, connection);
      else answer(res, seen);
    });
  }

  /** tower asks before it honours a client's own impersonation: recorded, and always denied */
  #review(res: ServerResponse, seen: Received, connection: ConnectionState): void {
    let user = '';
    try { user = String((JSON.parse(seen.body.toString('utf8')) as { spec?: { user?: unknown } }).spec?.user ?? ''); } catch { /* an unreadable review asks about no one */ }
    this.events.push({ kind: 'review', connection: connection.id, auth: seen.auth, user, impersonated: seen.impersonateUser.length + seen.impersonateGroup.length + seen.impersonateOther.length > 0 });
    const body = JSON.stringify({ kind: 'SubjectAccessReview', apiVersion: 'authorization.k8s.io/v1', status: { allowed: false, reason: 'the recording upstream allows no impersonation' } });
    res.writeHead(201, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  /**
   * An upgrade is recorded like any request, with the body its head announces (tower should send
   * none) and whatever follows, then answered 200 and closed: nothing here switches protocols.
   */
  #onUpgrade(server: RecorderServer, req: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.lastActivity = Date.now();
    this.#upgraded.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => this.#upgraded.delete(socket));
    const seen = this.#received(server, req, this.#state(socket));
    seen.upgrade = true;
    this.events.push(seen);
    const length = Number(req.headers['content-length'] ?? 0);
    const chunked = /chunked/i.test(String(req.headers['transfer-encoding'] ?? ''));
    let bytes = head;
    const framed = (): { body: Buffer; rest: Buffer } | undefined => {
      if (chunked) {
        // bytes that are not chunked encoding are all trailing: no body the head announced
        try { return decodeChunked(bytes); } catch { return { body: Buffer.alloc(0), rest: bytes }; }
      }
      return bytes.length >= length ? { body: bytes.subarray(0, length), rest: bytes.subarray(length) } : undefined;
    };
    const onData = (d: Buffer) => { this.lastActivity = Date.now(); bytes = Buffer.concat([bytes, d]); };
    socket.on('data', onData);
    const settle = () => setTimeout(() => {
      socket.off('data', onData);
      const f = framed();
      seen.complete = f !== undefined;
      seen.body = f?.body ?? bytes;
      seen.trailing = f?.rest ?? Buffer.alloc(0);
      const body = JSON.stringify(answerBody(seen));
      socket.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n${recorderHeaderLines(seen)}Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    }, UPGRADE_SETTLE_MS);
    const waitedUntil = Date.now() + UPGRADE_BODY_WAIT_MS;
    const poll = () => { if (framed() || Date.now() >= waitedUntil) settle(); else setTimeout(poll, 10); };
    poll();
  }

  #onClientError(server: RecorderServer, err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Duplex): void {
    const code = err.code ?? err.message;
    // a connection tower tore down mid-request is not garbage; bytes the parser refused are
    if (code.startsWith('HPE_')) {
      this.events.push({ kind: 'garbage', server, connection: this.#state(socket).id, code, bytes: (err.rawPacket ?? Buffer.alloc(0)).toString('latin1').slice(0, SHOWN_BYTES) });
    }
    socket.destroy();
  }
}

function framingOf(req: IncomingMessage): string {
  const h = req.headersDistinct;
  const parts = [...(h['content-length'] ?? []).map((v) => `Content-Length: ${v}`), ...(h['transfer-encoding'] ?? []).map((v) => `Transfer-Encoding: ${v}`)];
  return parts.length ? parts.join(', ') : 'unframed';
}

function answerBody(seen: Received) {
  return { server: seen.server, method: seen.method, url: seen.url, impersonateUser: seen.impersonateUser, auth: seen.auth, bodyBytes: seen.body.length };
}

/** the answer names what it answers in headers too, so that a HEAD's answer can be matched */
function recorderHeaders(seen: Received): Record<string, string> {
  return { 'x-recorder-url': headerSafe(seen.url), 'x-recorder-user': headerSafe(seen.impersonateUser.join(',')), 'x-recorder-server': seen.server };
}

function recorderHeaderLines(seen: Received): string {
  return Object.entries(recorderHeaders(seen)).map(([k, v]) => `${k}: ${v}\r\n`).join('');
}

function answer(res: ServerResponse, seen: Received): void {
  const body = JSON.stringify(answerBody(seen));
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...recorderHeaders(seen) });
  res.end(body);
}

/** a request target can carry bytes a header value may not: they are escaped, never dropped */
function headerSafe(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function listen(s: Server): Promise<number> {
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve((s.address() as { port: number }).port)));
}
