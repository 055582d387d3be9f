import { Agent, request as httpRequest, type AgentOptions, type ClientRequestArgs } from 'node:http';
import type { Duplex } from 'node:stream';
import { isIP } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import WebSocket from 'ws';
import { ProtocolError, TowerError } from '../errors.ts';
import { printable } from '../observe/log.ts';
import { serverIdProblem } from '../config/names.ts';
import { FEATURES_HEADER, HELD_HEADER, SERVER_ID_HEADER, SUBPROTOCOL } from '../tunnel/protocol.ts';
import { WebSocketStream } from '../tunnel/ws-stream.ts';

const MAX_MESSAGE_BYTES = 256 * 1024;

export interface DialWebSocketOptions {
  timeoutMs: number;
  /** PEM CA bundle for a wss:// proxy (default: the system's roots) */
  ca?: string;
  env?: NodeJS.ProcessEnv;
  /** replicas already held (HELD_HEADER): one of them answers 409 instead of upgrading */
  held?: string[];
}

/** The replica reached is one the agent holds already (it answered 409 without upgrading). */
export class HeldReplicaError extends TowerError {
  readonly serverId: string;
  constructor(serverId: string) {
    super('EHELD', `reached replica ${serverId} again`);
    this.name = 'HeldReplicaError';
    this.serverId = serverId;
  }
}

/**
 * Opens the WebSocket to the proxy's agent port. The subprotocol goes as a raw header: the Go
 * proxy's 101 does not echo it, which ws would otherwise refuse; ours echoes it, and both pass.
 */
export interface ProxyConnection {
  stream: WebSocketStream;
  /** the extensions the proxy offered in its 101 (none from a Go proxy) */
  features: string[];
  /** the proxy replica's id, when it names one (SERVER_ID_HEADER) */
  serverId?: string;
}

export function dialWebSocket(url: string, opts: DialWebSocketOptions): Promise<ProxyConnection> {
  const proxy = proxyFor(new URL(url), opts.env ?? process.env);
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      headers: {
        'Sec-WebSocket-Protocol': SUBPROTOCOL,
        ...(opts.held?.length ? { [HELD_HEADER]: opts.held.join(',') } : {}),
      },
      perMessageDeflate: false,
      maxPayload: MAX_MESSAGE_BYTES,
      handshakeTimeout: opts.timeoutMs,
      followRedirects: false,
      ca: opts.ca,
      // masking protects browsers' peers, not a tunnel of encrypted bytes; a zero mask skips the XOR
      generateMask: (mask: Buffer) => {
        mask.fill(0);
      },
      agent: proxy ? new ConnectProxyAgent(proxy, url.startsWith('wss:'), opts.ca, { keepAlive: false }) : undefined,
    });
    let done = false;
    let features: string[] = [];
    let serverId: string | undefined;
    const fail = (err: Error) => {
      if (done) return;
      done = true;
      ws.terminate();
      reject(err);
    };
    ws.on('upgrade', (res) => {
      const p = res.headers['sec-websocket-protocol'];
      if (p !== undefined && p !== SUBPROTOCOL)
        fail(
          new ProtocolError(
            `${url} answered with WebSocket subprotocol ${p}, not ${SUBPROTOCOL}: is this a tower proxy?`,
          ),
        );
      delete res.headers['sec-websocket-protocol'];
      const offered = res.headers[FEATURES_HEADER];
      if (typeof offered === 'string')
        features = offered
          .split(',')
          .map((f) => f.trim())
          .filter(Boolean);
      const id = res.headers[SERVER_ID_HEADER];
      if (typeof id === 'string' && !serverIdProblem(id)) serverId = id;
    });
    ws.on('unexpected-response', (_req, res) => {
      const id = res.headers[SERVER_ID_HEADER];
      if (res.statusCode === 409 && typeof id === 'string' && opts.held?.includes(id)) {
        res.resume();
        fail(new HeldReplicaError(id));
        return;
      }
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        if (body.length < 200) body += d;
      });
      res.on('end', () =>
        fail(
          new TowerError(
            'EHTTP',
            `${url} answered ${res.statusCode} ${printable(res.statusMessage ?? '')}` +
              `${body.trim() ? `: ${printable(body.trim().slice(0, 200))}` : ''} ` +
              "(is --proxy-server the proxy's agent port?)",
          ),
        ),
      );
      res.on('error', () => fail(new TowerError('EHTTP', `${url} answered ${res.statusCode}`)));
    });
    ws.on('error', (err: NodeJS.ErrnoException) =>
      fail(
        new TowerError(
          'EDIAL',
          `cannot reach the proxy at ${url}${proxy ? ` through ${proxy.host}` : ''}: ${err.message}`,
          { cause: err },
        ),
      ),
    );
    ws.on('open', () => {
      if (done) return;
      done = true;
      resolve({ stream: new WebSocketStream(ws, url), features, serverId });
    });
  });
}

/** HTTP(S)_PROXY and NO_PROXY as Go's ProxyFromEnvironment reads them (loopback never proxied). */
export function proxyFor(target: URL, env: NodeJS.ProcessEnv): URL | undefined {
  const secure = target.protocol === 'wss:' || target.protocol === 'https:';
  const raw = secure ? (env.HTTPS_PROXY ?? env.https_proxy) : (env.HTTP_PROXY ?? env.http_proxy);
  if (!raw) return undefined;
  const noProxy = (env.NO_PROXY ?? env.no_proxy ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  const host = target.hostname.toLowerCase().replace(/^\[|\]$/g, '');
  // as Go: never through a proxy to this machine
  if (host === 'localhost' || (isIP(host) && (host === '::1' || host.startsWith('127.')))) return undefined;
  for (const rule of noProxy) {
    if (rule === '*') return undefined;
    const r = rule.replace(/:\d+$/, '').replace(/^\*?\./, '.');
    if (host === r.replace(/^\./, '') || (r.startsWith('.') && host.endsWith(r))) return undefined;
  }
  try {
    return new URL(raw.includes('://') ? raw : `http://${raw}`);
  } catch {
    throw new TowerError(
      'ECONFIG',
      `invalid ${secure ? 'HTTPS_PROXY' : 'HTTP_PROXY'} ${JSON.stringify(raw)}: ` +
        'want a URL such as http://proxy.example:3128',
    );
  }
}

/** Reaches the target through an HTTP CONNECT proxy; wraps TLS itself for wss. */
class ConnectProxyAgent extends Agent {
  #proxy: URL;
  #secure: boolean;
  #ca: string | undefined;
  constructor(proxy: URL, secure: boolean, ca: string | undefined, opts: AgentOptions) {
    super(opts);
    this.#proxy = proxy;
    this.#secure = secure;
    this.#ca = ca;
  }

  override createConnection(
    options: ClientRequestArgs & { servername?: string; ca?: unknown },
    callback?: (err: Error | null, stream: Duplex) => void,
  ): undefined {
    const cb = (err: Error | null, socket?: Duplex) => callback?.(err, socket as Duplex);
    const target = `${options.host}:${options.port}`;
    const headers: Record<string, string> = { host: target };
    if (this.#proxy.username) {
      headers['proxy-authorization'] =
        'Basic ' +
        Buffer.from(`${decodeURIComponent(this.#proxy.username)}:${decodeURIComponent(this.#proxy.password)}`).toString(
          'base64',
        );
    }
    const req = httpRequest({
      host: this.#proxy.hostname,
      port: this.#proxy.port || 80,
      method: 'CONNECT',
      path: target,
      headers,
      agent: false,
    });
    req.once('connect', (res, socket) => {
      if (res.statusCode !== 200) {
        socket.destroy();
        cb(new Error(`proxy ${this.#proxy.host} refused CONNECT ${target}: ${res.statusCode} ${res.statusMessage}`));
        return;
      }
      if (!this.#secure) {
        cb(null, socket);
        return;
      }
      const host = options.servername ?? options.host ?? undefined;
      cb(
        null,
        tlsConnect({
          socket,
          servername: host && !isIP(host) ? host : undefined,
          host: host ?? undefined,
          ca: this.#ca,
        }),
      );
    });
    req.once('error', (err) => cb(err));
    req.end();
    return undefined;
  }
}
