import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { issueApiserverPki, writeAgentKubeconfig, type ApiserverPki } from './apiserver-pki.ts';
import { decodeChunked } from './raw-http.ts';

/** which of the member's two servers a request reached */
export type RecorderServer = 'kube-apiserver' | 'ks-apiserver';
/**
 * how a request proved itself to the member: the agent's bearer token, the agent's client certificate, or not at all
 */
export type MemberAuth = 'token' | 'cert' | 'none';

/** One request as it arrived at the member's side of the wire. */
export interface Received {
  kind: 'request';
  server: RecorderServer;
  /** numbered per recorder, so that what came on one connection can be told apart */
  connection: number;
  method: string;
  url: string;
  /** the target's `probe` query parameter, which a test puts on a request to find it here */
  probe: string | undefined;
  httpVersion: string;
  auth: MemberAuth;
  authorization: string | undefined;
  impersonateUser: string[];
  impersonateGroup: string[];
  /** other Impersonate-* header names (uid, extras) */
  impersonateOther: string[];
  /** names of X-Tower-* headers: tower's own, between replicas, never meant for a member */
  towerHeaders: string[];
  /** every Audit-ID header value that arrived: tower's one, never a client's */
  auditIds: string[];
  /** trailer field names, lower case (an identity header must never ride in one) */
  trailers: string[];
  body: Buffer;
  /** the body ended as its framing says; false: the connection ended first */
  complete: boolean;
  /** the request is over here: its body ended, or its connection did */
  over?: boolean;
  /** how tower framed the body: its Content-Length and Transfer-Encoding headers as they arrived */
  framing: string;
  /**
   * it arrived while the previous request on its connection was still unanswered: something pipelined into the member
   */
  overlapped: boolean;
  upgrade: boolean;
  /** the connection was closed under it, unanswered (`?drop=reused`) */
  dropped?: boolean;
  /**
   * an upgrade's bytes after its head and announced body, before the answer: nothing should follow a refused upgrade
   */
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
  groups: string[];
  /** what it asks whether the user may do (its resourceAttributes: verb, resource, name, ...) */
  attributes: Record<string, string>;
  /** Impersonate-* headers on the review itself: there must be none */
  impersonated: boolean;
}

export type RecorderEvent = Received | Garbage | Review;

/** Bytes as they reached the member, before any parsing. */
export interface WireChunk {
  server: RecorderServer;
  connection: number;
  bytes: Buffer;
}

export interface RecordingUpstreamOptions {
  /**
   * as a kube-apiserver would: 401 to a request with neither the agent's token nor its certificate, 201 to a POST;
   * otherwise nothing is refused and every answer is 200
   */
  apiserver?: boolean;
  /**
   * an upgrade is switched (101) and its connection kept open; otherwise it is answered 200 and closed, so that nothing
   * switches protocols
   */
  switchUpgrades?: boolean;
}

const BODY_LIMIT_BYTES = 1024 * 1024;
/** raw bytes kept in all: beyond it (a long fuzz run) they still count as activity, but are not kept */
const WIRE_LIMIT_BYTES = 64 * 1024 * 1024;
/** the longest `?ms=N` / `?body-ms=N` honoured */
const MAX_DELAY_MS = 10_000;
const SHOWN_BYTES = 300;
/** how long an upgrade waits for the body its head announces before it is answered */
const UPGRADE_BODY_WAIT_MS = 500;
/** and then for anything that follows, which must be nothing */
const UPGRADE_SETTLE_MS = 50;
/**
 * idle connections stay, so that tower's pool never races a keep-alive close; dropConnections() starts afresh when a
 * test asks
 */
const KEEP_ALIVE_MS = 600_000;
const REVIEWS = '/apis/authorization.k8s.io/v1/subjectaccessreviews';

/** a connection's number, how many requests on it are still unanswered, and how many were answered */
interface ConnectionState {
  id: number;
  open: number;
  served: number;
}

/**
 * A member cluster that records everything reaching it, on every connection: an HTTPS
 * "kube-apiserver" that knows the agent by its bearer token or client certificate, and a
 * plain-HTTP "ks-apiserver". Each request is answered 200 with JSON (and X-Recorder-* headers, for
 * HEAD) naming the server, the request target and Impersonate-User it saw, framed by
 * Content-Length, kept alive. Nothing is refused here (unless `apiserver`): what tower lets through
 * is what a test asserts on. Every byte is kept as it arrived (`wire`), before any parsing.
 * `?ms=N` on a request (an upgrade too) delays its answer by N ms, time for a hostile peer to write
 * ahead of it; `?body-ms=N` sends the answer's head at once and its body N ms later; `?early=1`
 * answers as soon as the head arrives, before the body has (as Go's net/http does for a handler
 * that does not read it); `?drop=reused` on a connection that has answered before closes it
 * unanswered, as a keep-alive close that crosses the request on the wire would (`dropped`).
 */
export class RecordingUpstream {
  readonly events: RecorderEvent[] = [];
  readonly wire: WireChunk[] = [];
  readonly token = 'recording-upstream-token-' + Math.random().toString(36).slice(2);
  kubePort = 0;
  ksPort = 0;
  /** when the last byte arrived: a test waits for quiet before it judges */
  lastActivity = 0;
  readonly #options: RecordingUpstreamOptions;
  readonly #pki: ApiserverPki;
  #kube: Server;
  #ks: Server;
  #connections = new WeakMap<Duplex, ConnectionState>();
  #nextConnection = 1;
  #upgraded = new Set<Duplex>();
  #timers = new Set<NodeJS.Timeout>();
  #wireBytes = 0;

  private constructor(kube: Server, ks: Server, pki: ApiserverPki, options: RecordingUpstreamOptions) {
    this.#kube = kube;
    this.#ks = ks;
    this.#pki = pki;
    this.#options = options;
  }

  static async start(options: RecordingUpstreamOptions = {}): Promise<RecordingUpstream> {
    const pki = await issueApiserverPki('recording-upstream', { user: 'tower-agent', groups: [] });
    // lenient only where it would hide a smuggled request: no Host is still a request, and is recorded
    const http = { requireHostHeader: false, keepAliveTimeout: KEEP_ALIVE_MS, requestTimeout: 0 };
    const kube = createHttpsServer({
      ...http,
      ...pki.serving,
      ca: pki.caPem,
      requestCert: true,
      rejectUnauthorized: false,
    });
    const ks = createHttpServer(http);
    const r = new RecordingUpstream(kube, ks, pki, options);
    // tapped after the HTTP server took the socket: Node then feeds its parser from the same 'data' events
    kube.on('secureConnection', (socket: TLSSocket) => r.#state('kube-apiserver', socket));
    ks.on('connection', (socket: Duplex) => r.#state('ks-apiserver', socket));
    for (const [server, s] of [
      ['kube-apiserver', kube],
      ['ks-apiserver', ks],
    ] as const) {
      s.on('request', (req, res) => r.#onRequest(server, req, res));
      s.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => r.#onUpgrade(server, req, socket, head));
      s.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Duplex) =>
        r.#onClientError(server, err, socket),
      );
    }
    r.kubePort = await listen(kube);
    r.ksPort = await listen(ks);
    return r;
  }

  get kubeHostPort(): string {
    return `127.0.0.1:${this.kubePort}`;
  }
  get ksHostPort(): string {
    return `127.0.0.1:${this.ksPort}`;
  }
  get caPem(): string {
    return this.#pki.caPem;
  }

  /** the requests recorded from event `from` on (a length of `events` taken earlier) */
  requests(from = 0): Received[] {
    return this.events.slice(from).filter((e): e is Received => e.kind === 'request');
  }

  /** the requests whose target named `?probe=` this */
  of(probe: string): Received[] {
    return this.requests().filter((r) => r.probe === probe);
  }

  /** the bytes `server` received from chunk `from` of `wire` on (a length taken earlier), as latin1 text */
  received(server: RecorderServer, from = 0): string {
    return Buffer.concat(
      this.wire
        .slice(from)
        .filter((c) => c.server === server)
        .map((c) => c.bytes),
    ).toString('latin1');
  }

  /** The agent's kubeconfig for this kube-apiserver: a bearer token (as a ServiceAccount's) or a client certificate. */
  writeKubeconfig(path: string, how: 'token' | 'cert'): string {
    return writeAgentKubeconfig(
      path,
      `https://${this.kubeHostPort}`,
      this.#pki,
      how === 'cert' ? 'cert' : { token: this.token },
    );
  }

  /**
   * Closes every connection to the member: tower's pooled channels start afresh, so that one round cannot leak into the
   * next.
   */
  dropConnections(): void {
    for (const s of [this.#kube, this.#ks]) s.closeAllConnections();
    for (const socket of this.#upgraded) socket.destroy();
    this.#upgraded.clear();
  }

  close(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    this.dropConnections();
    const closed = [this.#kube, this.#ks].map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    return Promise.all(closed).then(() => undefined);
  }

  /** a connection's state, numbered and tapped as it opens */
  #state(server: RecorderServer, socket: Duplex): ConnectionState {
    const known = this.#connections.get(socket);
    if (known) return known;
    const c = { id: this.#nextConnection++, open: 0, served: 0 };
    this.#connections.set(socket, c);
    socket.on('data', (d: Buffer) => {
      this.lastActivity = Date.now();
      if (this.#wireBytes + d.length > WIRE_LIMIT_BYTES) return;
      this.#wireBytes += d.length;
      this.wire.push({ server, connection: c.id, bytes: Buffer.from(d) });
    });
    return c;
  }

  /** runs `fn` after `ms` (at once for 0), unless the recorder closes first */
  #after(ms: number, fn: () => void): void {
    if (ms <= 0) {
      fn();
      return;
    }
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
  }

  #auth(req: IncomingMessage): MemberAuth {
    if (req.headers.authorization === `Bearer ${this.token}`) return 'token';
    return (req.socket as TLSSocket).authorized ? 'cert' : 'none';
  }

  #received(server: RecorderServer, req: IncomingMessage, connection: ConnectionState): Received {
    const distinct = req.headersDistinct;
    return {
      kind: 'request',
      server,
      connection: connection.id,
      method: req.method ?? '',
      url: req.url ?? '',
      probe: probeOf(req.url ?? ''),
      httpVersion: req.httpVersion,
      auth: this.#auth(req),
      authorization: req.headers.authorization,
      impersonateUser: distinct['impersonate-user'] ?? [],
      impersonateGroup: distinct['impersonate-group'] ?? [],
      impersonateOther: Object.keys(distinct).filter(
        (k) => k.startsWith('impersonate-') && k !== 'impersonate-user' && k !== 'impersonate-group',
      ),
      towerHeaders: Object.keys(distinct).filter((k) => k.startsWith('x-tower-')),
      auditIds: distinct['audit-id'] ?? [],
      trailers: [],
      body: Buffer.alloc(0),
      complete: false,
      framing: framingOf(req),
      overlapped: connection.open > 0,
      upgrade: false,
      trailing: Buffer.alloc(0),
    };
  }

  #onRequest(server: RecorderServer, req: IncomingMessage, res: ServerResponse): void {
    this.lastActivity = Date.now();
    const connection = this.#state(server, req.socket);
    const seen = this.#received(server, req, connection);
    const unauthorized = this.#options.apiserver === true && server === 'kube-apiserver' && seen.auth === 'none';
    const review =
      !unauthorized && server === 'kube-apiserver' && req.method === 'POST' && seen.url.split('?')[0] === REVIEWS;
    // recorded as its head arrives: a request whose body never ends still reached the member
    if (!review) this.events.push(seen);
    connection.open++;
    // answered once its last byte is handed on ('finish'), or the connection is gone ('close'), whichever is first
    let answered = false;
    const done = () => {
      if (!answered) {
        answered = true;
        connection.open--;
      }
    };
    res.once('finish', () => {
      connection.served++;
      done();
    });
    res.once('close', done);
    if (!review && connection.served > 0 && /[?&]drop=reused(&|$)/.test(seen.url)) {
      seen.dropped = true;
      req.socket.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (d: Buffer) => {
      this.lastActivity = Date.now();
      if (size < BODY_LIMIT_BYTES) {
        chunks.push(d);
        size += d.length;
        seen.body = Buffer.concat(chunks);
      }
    });
    req.on('error', () => undefined);
    req.once('close', () => {
      seen.over = true;
    });
    const early = !unauthorized && !review && /[?&]early=1(&|$)/.test(seen.url);
    if (early) this.#answer(res, seen);
    req.on('end', () => {
      seen.complete = true;
      seen.trailers = Object.keys(req.trailers);
      if (unauthorized) json(res, 401, { server, kind: 'Status', code: 401, message: 'Unauthorized' });
      else if (review) this.#review(res, seen, connection);
      else if (!early) this.#answer(res, seen);
    });
  }

  /**
   * 200 (201 to an apiserver's POST) naming what it answers, after the target's `?ms=N`, its body after `?body-ms=N`
   */
  #answer(res: ServerResponse, seen: Received): void {
    const body = JSON.stringify(answerBody(seen));
    const status = this.#options.apiserver && seen.method === 'POST' ? 201 : 200;
    this.#after(delayOf(seen.url, 'ms'), () => {
      if (res.destroyed) return;
      res.writeHead(status, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        ...recorderHeaders(seen),
      });
      const bodyDelay = delayOf(seen.url, 'body-ms');
      if (bodyDelay > 0) res.flushHeaders();
      this.#after(bodyDelay, () => {
        if (!res.destroyed) res.end(body);
      });
    });
  }

  /** tower asks before it honours a client's own impersonation: recorded, and always denied */
  #review(res: ServerResponse, seen: Received, connection: ConnectionState): void {
    let spec: { user?: unknown; groups?: unknown; resourceAttributes?: Record<string, string> } = {};
    try {
      spec = (JSON.parse(seen.body.toString('utf8')) as { spec?: typeof spec }).spec ?? {};
    } catch {
      /* an unreadable review asks about no one */
    }
    this.events.push({
      kind: 'review',
      connection: connection.id,
      auth: seen.auth,
      user: String(spec.user ?? ''),
      groups: Array.isArray(spec.groups) ? spec.groups.map(String) : [],
      attributes: spec.resourceAttributes ?? {},
      impersonated: seen.impersonateUser.length + seen.impersonateGroup.length + seen.impersonateOther.length > 0,
    });
    json(res, 201, {
      kind: 'SubjectAccessReview',
      apiVersion: 'authorization.k8s.io/v1',
      status: { allowed: false, reason: 'the recording upstream allows no impersonation' },
    });
  }

  /**
   * An upgrade is recorded like any request, with the body its head announces (tower should send
   * none) and whatever follows before its answer: 200 and closed, or with `switchUpgrades` a 101
   * on a connection kept open (after which nothing speaks another protocol here).
   */
  #onUpgrade(server: RecorderServer, req: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.lastActivity = Date.now();
    this.#upgraded.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => this.#upgraded.delete(socket));
    const seen = this.#received(server, req, this.#state(server, socket));
    seen.upgrade = true;
    this.events.push(seen);
    const length = Number(req.headers['content-length'] ?? 0);
    const chunked = /chunked/i.test(String(req.headers['transfer-encoding'] ?? ''));
    let bytes = head;
    const framed = (): { body: Buffer; rest: Buffer } | undefined => {
      if (chunked) {
        // bytes that are not chunked encoding are all trailing: no body the head announced
        try {
          return decodeChunked(bytes);
        } catch {
          return { body: Buffer.alloc(0), rest: bytes };
        }
      }
      return bytes.length >= length ? { body: bytes.subarray(0, length), rest: bytes.subarray(length) } : undefined;
    };
    const onData = (d: Buffer) => {
      bytes = Buffer.concat([bytes, d]);
    };
    socket.on('data', onData);
    const answerAt = Date.now() + delayOf(seen.url, 'ms');
    const settle = () =>
      this.#after(Math.max(UPGRADE_SETTLE_MS, answerAt - Date.now()), () => {
        socket.off('data', onData);
        const f = framed();
        seen.complete = f !== undefined;
        seen.body = f?.body ?? bytes;
        seen.trailing = f?.rest ?? Buffer.alloc(0);
        if (socket.destroyed) return;
        if (this.#options.switchUpgrades) {
          socket.write(
            `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n` +
              `Upgrade: ${headerSafe(req.headers.upgrade ?? 'x')}\r\n\r\n`,
          );
          return;
        }
        const body = JSON.stringify(answerBody(seen));
        socket.end(
          `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n` +
            `${recorderHeaderLines(seen)}Content-Length: ${Buffer.byteLength(body)}\r\n` +
            `Connection: close\r\n\r\n${body}`,
        );
      });
    const waitedUntil = Date.now() + UPGRADE_BODY_WAIT_MS;
    const poll = () => {
      if (framed() || Date.now() >= waitedUntil) settle();
      else this.#after(10, poll);
    };
    poll();
  }

  #onClientError(server: RecorderServer, err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Duplex): void {
    const code = err.code ?? err.message;
    // a connection tower tore down mid-request is not garbage; bytes the parser refused are
    if (code.startsWith('HPE_')) {
      this.events.push({
        kind: 'garbage',
        server,
        connection: this.#state(server, socket).id,
        code,
        bytes: (err.rawPacket ?? Buffer.alloc(0)).toString('latin1').slice(0, SHOWN_BYTES),
      });
    }
    socket.destroy();
  }
}

function framingOf(req: IncomingMessage): string {
  const h = req.headersDistinct;
  const parts = [
    ...(h['content-length'] ?? []).map((v) => `Content-Length: ${v}`),
    ...(h['transfer-encoding'] ?? []).map((v) => `Transfer-Encoding: ${v}`),
  ];
  return parts.length ? parts.join(', ') : 'unframed';
}

function answerBody(seen: Received) {
  return {
    server: seen.server,
    method: seen.method,
    url: seen.url,
    impersonateUser: seen.impersonateUser,
    auth: seen.auth,
    bodyBytes: seen.body.length,
  };
}

/** the answer names what it answers in headers too, so that a HEAD's answer can be matched */
function recorderHeaders(seen: Received): Record<string, string> {
  return {
    'x-recorder-url': headerSafe(seen.url),
    'x-recorder-user': headerSafe(seen.impersonateUser.join(',')),
    'x-recorder-server': seen.server,
  };
}

function recorderHeaderLines(seen: Received): string {
  return Object.entries(recorderHeaders(seen))
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const s = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s) });
  res.end(s);
}

function probeOf(url: string): string | undefined {
  try {
    return new URL(url, 'http://member').searchParams.get('probe') ?? undefined;
  } catch {
    return undefined;
  }
}

/** `?NAME=N` of a request target, bounded: a delay in ms */
function delayOf(url: string, name: 'ms' | 'body-ms'): number {
  return Math.min(Number(new RegExp(`[?&]${name}=(\\d+)`).exec(url)?.[1] ?? 0), MAX_DELAY_MS);
}

/** a request target can carry bytes a header value may not: they are escaped, never dropped */
function headerSafe(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function listen(s: Server): Promise<number> {
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve((s.address() as { port: number }).port)));
}
