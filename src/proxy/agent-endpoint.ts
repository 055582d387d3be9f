import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Server as NetServer } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { RepeatedEvents, type Logger } from '../observe/log.ts';
import { FEATURES_HEADER, HELD_HEADER, OFFERED_FEATURES, SERVER_ID_HEADER, SUBPROTOCOL } from '../tunnel/protocol.ts';
import type { AgentSession, Authorizer, TunnelServer } from '../tunnel/server.ts';
import { WebSocketStream } from '../tunnel/ws-stream.ts';
import { AddressCounts, closeServers, ConnectionGuard, listenOn } from './connection-guard.ts';
import { LoginLimiter } from './login-limiter.ts';
import type { HandshakeResult, ProxyMetrics } from './metrics.ts';
import { serveHealth, type HealthOptions } from '../observe/health.ts';

export const HANDSHAKE_TIMEOUT_MS = 10_000;
export const MAX_PENDING_HANDSHAKES = 512;
export const MAX_PENDING_HANDSHAKES_PER_ADDRESS = 128;
/** TCP connections not yet admitted as agents (idle, in TLS, HTTP or SSH handshakes), in total and per address */
const MAX_PENDING_CONNECTIONS = 4096;
const MAX_PENDING_CONNECTIONS_PER_ADDRESS = 1024;
/** SSH packets are at most 35 000 bytes; Go writes one message per packet */
export const MAX_MESSAGE_BYTES = 256 * 1024;
export const WS_PING_INTERVAL_MS = 30_000;
const FEATURES_LINE = `${FEATURES_HEADER}: ${OFFERED_FEATURES.join(',')}`;

export interface AgentEndpointOptions {
  tunnel: TunnelServer;
  authorize: Authorizer;
  onSession: (session: AgentSession) => void;
  /** serve TLS (wss://) with this certificate; plain HTTP (ws://) without */
  tls?: { cert: string; key: string };
  /** /livez, /readyz, /metrics (and /health, /version) */
  health: HealthOptions;
  /** this replica's id, in every 101: an agent that holds a session to it already hangs up before SSH */
  serverId: string;
  /** undefined while agents are admitted; else why not (starting, draining) */
  refusing?: () => string | undefined;
  metrics?: ProxyMetrics;
  log: Logger;
}

/**
 * The port agents dial: HTTP with `/livez`, `/readyz`, `/metrics`, `/health` and `/version`, and the WebSocket upgrade
 * (subprotocol kubesphere-v1) that carries each agent's SSH connection.
 */
export class AgentEndpoint {
  readonly server: Server;
  /** what listens: the HTTP server itself, or a TCP listener that hands the TLS server connections once they speak */
  #listener: NetServer;
  #wss: WebSocketServer;
  #opts: AgentEndpointOptions;
  #log: Logger;
  /** WebSocket handshakes in progress, up to SSH and `config` */
  #pending = new AddressCounts(MAX_PENDING_HANDSHAKES, MAX_PENDING_HANDSHAKES_PER_ADDRESS);
  #logins = new LoginLimiter();
  /** a crowd redialing after an outage is refused thousands of times: said once per reason and window */
  #refusals = new RepeatedEvents();
  #guard: ConnectionGuard;
  #pinger: NodeJS.Timeout;
  #alive = new WeakSet<WebSocket>();

  constructor(opts: AgentEndpointOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    const timeouts = { headersTimeout: HANDSHAKE_TIMEOUT_MS, requestTimeout: HANDSHAKE_TIMEOUT_MS };
    this.#guard = new ConnectionGuard({
      maxTotal: MAX_PENDING_CONNECTIONS,
      maxPerAddress: MAX_PENDING_CONNECTIONS_PER_ADDRESS,
      firstRequestMs: HANDSHAKE_TIMEOUT_MS,
      what: 'agent port',
      log: opts.log,
    });
    this.server = opts.tls
      ? createHttpsServer({
          cert: opts.tls.cert,
          key: opts.tls.key,
          handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
          ALPNProtocols: ['http/1.1'],
          ...timeouts,
        })
      : createServer(timeouts);
    this.#listener = this.#guard.listenerFor(this.server, HANDSHAKE_TIMEOUT_MS);
    this.#wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: MAX_MESSAGE_BYTES,
      clientTracking: true,
      // echo the subprotocol (Go's proxy omits it; Go and tower agents accept either)
      handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    });
    // offer tower's extensions in the 101; Go agents ignore the headers
    const serverLine = `${SERVER_ID_HEADER}: ${opts.serverId}`;
    this.#wss.on('headers', (headers) => headers.push(FEATURES_LINE, serverLine));
    this.server.on('request', (req, res) => this.#onRequest(req, res));
    this.server.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      this.#log.warn('dropped a connection that does not speak HTTP on the agent port', {
        remote: remoteOf(socket),
        err: err.code ?? err.message,
      });
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      socket.destroy();
    });
    // a WebSocket ping per interval: a silent agent (dead link, frozen host) is dropped at the next one
    this.#pinger = setInterval(() => {
      for (const ws of this.#wss.clients) {
        if (!this.#alive.has(ws)) {
          ws.terminate();
          continue;
        }
        this.#alive.delete(ws);
        ws.ping();
      }
    }, WS_PING_INTERVAL_MS);
    this.#pinger.unref();
  }

  listen(port: number, host: string): Promise<number> {
    return listenOn(this.#listener, port, host);
  }

  /** Drain: no new connections; agents already admitted stay until the proxy closes their sessions. */
  stopAccepting(): void {
    this.#listener.close();
    this.server.closeIdleConnections();
  }

  close(): Promise<void> {
    clearInterval(this.#pinger);
    this.#refusals.close();
    this.#guard.close();
    for (const ws of this.#wss.clients) ws.terminate();
    this.#wss.close();
    return closeServers(this.#listener, this.server);
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    this.#guard.seen(req.socket);
    if (serveHealth(req, res, this.#opts.health)) return;
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('404 page not found\n');
  }

  /**
   * Logs a refusal (once per reason and window, then counts). A method of its own: the count's
   * closure lives as long as refusals go on, and must not hold the first refused socket and request.
   */
  #sayRefused(why: string, remote: string): void {
    this.#refusals.note(
      why,
      () => this.#log.warn('refused an agent connection', { remote, why }),
      (refused, seconds) => this.#log.warn('refused agent connections', { why, refused, inLast: `${seconds}s` }),
    );
  }

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.#guard.seen(socket);
    const remote = remoteOf(socket);
    socket.on('error', () => socket.destroy());
    const refuse = (
      status: number,
      text: string,
      why: string,
      result: HandshakeResult = status === 400 ? 'failed' : 'limited',
    ) => {
      this.#opts.metrics?.handshakes.inc({ result });
      this.#sayRefused(why, remote);
      socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n${why}\n`);
      socket.destroy();
    };
    const protocols = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
    if ((req.headers.upgrade ?? '').toLowerCase() !== 'websocket')
      return refuse(400, 'Bad Request', 'only WebSocket upgrades are served on the agent port');
    if (!protocols.includes(SUBPROTOCOL))
      return refuse(400, 'Bad Request', `WebSocket subprotocol must be ${SUBPROTOCOL}`);
    const unavailable = this.#opts.refusing?.();
    if (unavailable) return refuse(503, 'Service Unavailable', unavailable, 'unavailable');
    // an agent of several replicas that reached one it holds: said at once, before any handshake slot or SSH
    const held = req.headers[HELD_HEADER];
    if (typeof held === 'string' && held.length <= 4096 && held.split(',').includes(this.#opts.serverId)) {
      this.#opts.metrics?.handshakes.inc({ result: 'held' });
      socket.end(
        `HTTP/1.1 409 Conflict\r\n${SERVER_ID_HEADER}: ${this.#opts.serverId}\r\nContent-Type: ` +
          `text/plain\r\nConnection: close\r\n\r\nthis agent holds a session to replica ${this.#opts.serverId} ` +
          `already\n`,
      );
      return;
    }
    const ip = (socket as Duplex & { remoteAddress?: string }).remoteAddress ?? 'unknown';
    const full = this.#pending.acquire(ip);
    if (full === 'total')
      return refuse(503, 'Service Unavailable', 'too many agent handshakes in progress; retry later');
    if (full)
      return refuse(429, 'Too Many Requests', 'too many agent handshakes in progress from this address; retry later');
    let counted = true;
    const done = () => {
      if (!counted) return;
      counted = false;
      this.#pending.release(ip);
    };
    socket.once('close', done);
    // a refusal by the authorizer is counted against (address, name); any other failure against the address
    let judged = false;
    let denied = false;
    const authorize: Authorizer = async (config, who) => {
      const delay = this.#logins.delayMs(ip, config.name);
      if (delay > 0) await sleep(delay);
      const verdict = await this.#opts.authorize(config, who);
      judged = true;
      denied = verdict !== undefined;
      if (denied) this.#logins.failed(ip, config.name);
      else this.#logins.succeeded(ip, config.name);
      return verdict;
    };
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      this.#alive.add(ws);
      ws.on('pong', () => this.#alive.add(ws));
      // the agent's own traffic shows it is alive, too
      ws.on('message', () => this.#alive.add(ws));
      const stream = new WebSocketStream(ws, remote);
      this.#opts.tunnel
        .accept(stream, {
          remote,
          authorize,
          handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
          onChannel: this.#opts.metrics?.onChannel,
          log: this.#log.child({ remote }),
        })
        .then(
          (session) => {
            done();
            this.#opts.metrics?.handshakes.inc({ result: 'accepted' });
            // an admitted agent is no stranger: its connection leaves the pending caps
            this.#guard.release(socket);
            this.#opts.onSession(session);
          },
          (err: Error) => {
            done();
            this.#opts.metrics?.handshakes.inc({ result: denied ? 'unauthorized' : 'failed' });
            if (!judged) this.#logins.failed(ip, '');
            this.#log.warn('agent handshake failed', { remote, err: err.message });
          },
        );
    });
  }
}

function remoteOf(socket: Duplex): string {
  const s = socket as Duplex & { remoteAddress?: string; remotePort?: number };
  return s.remoteAddress ? `${s.remoteAddress}:${s.remotePort}` : 'unknown';
}
