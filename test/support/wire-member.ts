import { writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { stringify } from 'yaml';
import { CertificateAuthority } from '../../src/pki/ca.ts';

/** which of the member's two servers a request reached */
export type WireServer = 'kube-apiserver' | 'ks-apiserver';

/** One request as the member's HTTP parser read it. */
export interface WireRequest {
  server: WireServer;
  method: string;
  /** the request target as sent */
  url: string;
  /** how it authenticated: the agent's bearer token, the agent's client certificate, or nothing */
  auth: 'token' | 'cert' | 'none';
  upgrade: boolean;
}

/** an answer (or a 101) waits this long when the request asks `?ms=N`: time for a hostile peer to write ahead of it */
const MAX_DELAY_MS = 10_000;

/**
 * A member cluster that keeps every byte reaching it: an HTTPS "kube-apiserver" (the agent's bearer
 * token or its client certificate; anything else is answered 401, and still recorded) and a plain
 * HTTP "ks-apiserver". Each server records the bytes it received, before any parsing, and each
 * request its parser read: what a test asserts on is the far side of the wire, not what a client
 * was told. `?ms=N` on any request (an upgrade too) delays its answer (or its 101) by N ms;
 * `?body-ms=N` sends the answer's head at once and its body N ms later.
 */
export class WireMember {
  /** every request either server's parser read, in order */
  readonly requests: WireRequest[] = [];
  readonly token = 'wire-member-token-' + Math.random().toString(36).slice(2);
  caPem = '';
  kubePort = 0;
  ksPort = 0;
  #clientCert = '';
  #clientKey = '';
  #raw: Record<WireServer, Buffer[]> = { 'kube-apiserver': [], 'ks-apiserver': [] };
  #sockets = new Set<Socket>();
  #timers = new Set<NodeJS.Timeout>();
  #kube: Server;
  #ks: Server;

  private constructor(kube: Server, ks: Server) {
    this.#kube = kube;
    this.#ks = ks;
  }

  static async start(): Promise<WireMember> {
    const caPair = await CertificateAuthority.create('wire-member-ca');
    const ca = await CertificateAuthority.load(caPair, 'wire-member');
    const serving = await ca.issueServer(['127.0.0.1', 'localhost']);
    const client = await ca.issueClient('tower-agent', []);
    const kube = createHttpsServer({ cert: serving.cert, key: serving.key, ca: caPair.cert, requestCert: true, rejectUnauthorized: false });
    const ks = createHttpServer();
    const m = new WireMember(kube, ks);
    m.caPem = caPair.cert;
    m.#clientCert = client.cert;
    m.#clientKey = client.key;
    // tapped after the HTTP server took the socket: Node then feeds its parser from the same 'data' events
    kube.on('secureConnection', (s: TLSSocket) => m.#tap('kube-apiserver', s));
    ks.on('connection', (s: Socket) => m.#tap('ks-apiserver', s));
    for (const [server, s] of [['kube-apiserver', kube], ['ks-apiserver', ks]] as const) {
      s.on('request', (req, res) => m.#onRequest(server, req, res));
      s.on('upgrade', (req: IncomingMessage, socket: Socket) => m.#onUpgrade(server, req, socket));
    }
    m.kubePort = await listen(kube);
    m.ksPort = await listen(ks);
    return m;
  }

  get kubeHostPort(): string { return `127.0.0.1:${this.kubePort}`; }
  get ksHostPort(): string { return `127.0.0.1:${this.ksPort}`; }

  /** every byte `server` received so far, as latin1 text (the order of connections kept) */
  received(server: WireServer): string {
    return Buffer.concat(this.#raw[server]).toString('latin1');
  }

  /** The agent's kubeconfig for this kube-apiserver: a bearer token (a ServiceAccount's) or a client certificate. */
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

  close(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    for (const s of this.#sockets) s.destroy();
    const closed = [this.#kube, this.#ks].map((s) => new Promise<void>((resolve) => { s.close(() => resolve()); s.closeAllConnections(); }));
    return Promise.all(closed).then(() => undefined);
  }

  #tap(server: WireServer, socket: Socket): void {
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    socket.on('data', (d: Buffer) => { this.#raw[server].push(Buffer.from(d)); });
  }

  #record(server: WireServer, req: IncomingMessage, upgrade: boolean): WireRequest {
    const socket = req.socket as TLSSocket;
    const auth = req.headers.authorization === `Bearer ${this.token}` ? 'token' : server === 'kube-apiserver' && socket.authorized ? 'cert' : 'none';
    const r: WireRequest = { server, method: req.method ?? '', url: req.url ?? '', auth, upgrade };
    this.requests.push(r);
    return r;
  }

  /** `?NAME=N` of a request target, bounded: a delay in ms */
  #delayOf(url: string, name = 'ms'): number {
    const ms = Number(new RegExp(`[?&]${name}=(\\d+)`).exec(url)?.[1] ?? 0);
    return Math.min(ms, MAX_DELAY_MS);
  }

  #later(ms: number, fn: () => void): void {
    const t = setTimeout(() => { this.#timers.delete(t); fn(); }, ms);
    this.#timers.add(t);
  }

  #onRequest(server: WireServer, req: IncomingMessage, res: ServerResponse): void {
    const r = this.#record(server, req, false);
    req.resume();
    req.on('error', () => undefined);
    req.on('end', () => {
      if (server === 'kube-apiserver' && r.auth === 'none') { json(res, 401, { kind: 'Status', code: 401, message: 'Unauthorized' }); return; }
      const body = JSON.stringify({ server, method: r.method, url: r.url });
      this.#later(this.#delayOf(r.url), () => {
        if (res.destroyed) return;
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.flushHeaders();
        this.#later(this.#delayOf(r.url, 'body-ms'), () => { if (!res.destroyed) res.end(body); });
      });
    });
  }

  /** an upgrade is recorded, then switched after its delay; nothing speaks another protocol here afterwards */
  #onUpgrade(server: WireServer, req: IncomingMessage, socket: Socket): void {
    const r = this.#record(server, req, true);
    socket.on('error', () => undefined);
    // Node leaves an upgraded socket paused for its new owner: the tap must go on seeing what arrives
    socket.resume();
    this.#later(this.#delayOf(r.url), () => {
      if (!socket.destroyed) socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${req.headers.upgrade ?? 'x'}\r\n\r\n`);
    });
  }
}

function json(res: ServerResponse, code: number, body: unknown): void {
  const s = JSON.stringify(body);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s) });
  res.end(s);
}

function listen(s: Server): Promise<number> {
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve((s.address() as { port: number }).port)));
}
