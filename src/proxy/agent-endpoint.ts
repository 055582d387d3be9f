import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Logger } from '../observe/log.ts';
import { VERSION } from '../version.ts';
import { FEATURE_TLS_AT_AGENT, FEATURES_HEADER, SUBPROTOCOL } from '../tunnel/protocol.ts';
import type { AgentSession, Authorizer, TunnelServer } from '../tunnel/server.ts';
import { WebSocketStream } from '../tunnel/ws-stream.ts';

export const HANDSHAKE_TIMEOUT_MS = 10_000;
export const MAX_PENDING_HANDSHAKES = 512;
/** SSH packets are at most 35 000 bytes; Go writes one message per packet */
export const MAX_MESSAGE_BYTES = 256 * 1024;
export const WS_PING_INTERVAL_MS = 30_000;
const AUTH_FAILURE_WINDOW_MS = 60_000;
const MAX_AUTH_FAILURES_PER_WINDOW = 20;

export interface AgentEndpointOptions {
  tunnel: TunnelServer;
  authorize: Authorizer;
  onSession: (session: AgentSession) => void;
  log: Logger;
}

/**
 * The port agents dial: HTTP with `/health` and `/version`, and the WebSocket upgrade
 * (subprotocol kubesphere-v1) that carries each agent's SSH connection.
 */
export class AgentEndpoint {
  readonly server: Server;
  #wss: WebSocketServer;
  #opts: AgentEndpointOptions;
  #log: Logger;
  #pending = 0;
  #failures = new Map<string, { count: number; since: number }>();
  #pinger: NodeJS.Timeout;
  #alive = new WeakSet<WebSocket>();

  constructor(opts: AgentEndpointOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.server = createServer({ headersTimeout: HANDSHAKE_TIMEOUT_MS, requestTimeout: HANDSHAKE_TIMEOUT_MS });
    this.#wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: MAX_MESSAGE_BYTES,
      clientTracking: true,
      // echo the subprotocol (Go's proxy omits it; Go and tower agents accept either)
      handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    });
    // offer tower's extensions in the 101; Go agents ignore the header
    this.#wss.on('headers', (headers) => headers.push(`${FEATURES_HEADER}: ${FEATURE_TLS_AT_AGENT}`));
    this.server.on('request', (req, res) => this.#onRequest(req, res));
    this.server.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      this.#log.warn('dropped a connection that does not speak HTTP on the agent port', { remote: remoteOf(socket), err: err.code ?? err.message });
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      socket.destroy();
    });
    // a WebSocket ping per interval: a silent agent (dead link, frozen host) is dropped at the next one
    this.#pinger = setInterval(() => {
      for (const ws of this.#wss.clients) {
        if (!this.#alive.has(ws)) { ws.terminate(); continue; }
        this.#alive.delete(ws);
        ws.ping();
      }
    }, WS_PING_INTERVAL_MS);
    this.#pinger.unref();
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

  close(): Promise<void> {
    clearInterval(this.#pinger);
    for (const ws of this.#wss.clients) ws.terminate();
    this.#wss.close();
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '').split('?')[0];
    if (req.method === 'GET' && path === '/health') return void res.end('OK\n');
    if (req.method === 'GET' && path === '/version') return void res.end(VERSION + '\n');
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('404 page not found\n');
  }

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const remote = remoteOf(socket);
    socket.on('error', () => socket.destroy());
    const refuse = (status: number, text: string, why: string) => {
      this.#log.warn('refused an agent connection', { remote, why });
      socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n${why}\n`);
      socket.destroy();
    };
    const protocols = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
    if ((req.headers.upgrade ?? '').toLowerCase() !== 'websocket') return refuse(400, 'Bad Request', 'only WebSocket upgrades are served on the agent port');
    if (!protocols.includes(SUBPROTOCOL)) return refuse(400, 'Bad Request', `WebSocket subprotocol must be ${SUBPROTOCOL}`);
    const ip = (socket as Duplex & { remoteAddress?: string }).remoteAddress ?? 'unknown';
    if (this.#tooManyFailures(ip)) return refuse(429, 'Too Many Requests', 'too many failed agent logins from this address; retry later');
    if (this.#pending >= MAX_PENDING_HANDSHAKES) return refuse(503, 'Service Unavailable', 'too many agent handshakes in progress; retry later');
    this.#pending++;
    let counted = true;
    const done = () => { if (counted) { counted = false; this.#pending--; } };
    socket.once('close', done);
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      this.#alive.add(ws);
      ws.on('pong', () => this.#alive.add(ws));
      // the agent's own traffic shows it is alive, too
      ws.on('message', () => this.#alive.add(ws));
      const stream = new WebSocketStream(ws, remote);
      this.#opts.tunnel.accept(stream, {
        remote,
        authorize: this.#opts.authorize,
        handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
        log: this.#log.child({ remote }),
      }).then((session) => {
        done();
        this.#opts.onSession(session);
      }, (err: Error) => {
        done();
        this.#countFailure(ip);
        this.#log.warn('agent handshake failed', { remote, err: err.message });
      });
    });
  }

  #tooManyFailures(ip: string): boolean {
    const f = this.#failures.get(ip);
    if (!f) return false;
    if (Date.now() - f.since > AUTH_FAILURE_WINDOW_MS) { this.#failures.delete(ip); return false; }
    return f.count >= MAX_AUTH_FAILURES_PER_WINDOW;
  }

  #countFailure(ip: string): void {
    const now = Date.now();
    const f = this.#failures.get(ip);
    if (!f || now - f.since > AUTH_FAILURE_WINDOW_MS) this.#failures.set(ip, { count: 1, since: now });
    else f.count++;
    if (this.#failures.size > 10_000) {
      for (const [k, v] of this.#failures) if (now - v.since > AUTH_FAILURE_WINDOW_MS) this.#failures.delete(k);
    }
  }
}

function remoteOf(socket: Duplex): string {
  const s = socket as Duplex & { remoteAddress?: string; remotePort?: number };
  return s.remoteAddress ? `${s.remoteAddress}:${s.remotePort}` : 'unknown';
}
