import type { Duplex } from 'node:stream';
import ssh2 from 'ssh2';
import type { ServerChannel } from 'ssh2';
import { ProtocolError, TimeoutError, TowerError } from '../errors.ts';
import type { Logger } from '../observe/log.ts';
import { ALGORITHMS, type TunnelConnection } from './ssh.ts';
import {
  CHANNEL_TYPE,
  CHANNEL_TYPE_CONTROL,
  decodeConfig,
  encodeReplicaView,
  FEATURE_REPLICAS,
  type ReplicaView,
  REQUEST_CONFIG,
  REQUEST_PING,
  SERVER_IDENT,
  type AgentConfig,
} from './protocol.ts';
import { TunnelSession } from './session.ts';

export const CHANNEL_OPEN_TIMEOUT_MS = 15_000;
export const MAX_CHANNELS_PER_SESSION = 4096;
/** time for a rejection's text to reach the agent before the connection is closed */
const REJECT_LINGER_MS = 200;

/** The proxy's verdict on an agent's `config`: undefined to admit it, or the text Go agents print. */
export type Authorizer = (config: AgentConfig, remote: string) => Promise<string | undefined>;

/** How a channel open went, for metrics: its time, and why it failed when it did. */
export type ChannelObserver = (
  session: AgentSession,
  ms: number,
  failure?: 'refused' | 'timeout' | 'limit' | 'closed',
) => void;

export interface AcceptOptions {
  remote: string;
  onChannel?: ChannelObserver;
  authorize: Authorizer;
  handshakeTimeoutMs: number;
  log: Logger;
}

/**
 * The proxy's side of the tunnel core: an SSH server over streams it is handed (WebSocket
 * connections), which admits an agent once its `config` is authorized.
 */
export class TunnelServer {
  #ssh: ssh2.Server;
  #pending = new WeakMap<object, (conn: TunnelConnection) => void>();

  constructor(hostKey: string) {
    this.#ssh = new ssh2.Server(
      { hostKeys: [hostKey], ident: SERVER_IDENT, algorithms: ALGORITHMS as never },
      (conn) => {
        const c = conn as TunnelConnection;
        const onConnection = this.#pending.get(c._sock as object);
        if (onConnection) onConnection(c);
        else c.end();
      },
    );
  }

  /** SSH handshake and `config` exchange on `stream`; resolves with the admitted session. */
  accept(stream: Duplex, opts: AcceptOptions): Promise<AgentSession> {
    return new Promise((resolve, reject) => {
      let settled = false;
      let conn: TunnelConnection | undefined;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
        if (conn) conn.end();
        stream.destroy();
      };
      // a refused agent may hang up before the linger ends: report the refusal, not the hang-up
      let refusal: Error | undefined;
      const refuse = (err: Error) => {
        refusal = err;
        setTimeout(() => fail(err), REJECT_LINGER_MS).unref();
      };
      const timer = setTimeout(
        () => fail(new ProtocolError(`no valid config request within ${opts.handshakeTimeoutMs} ms`)),
        opts.handshakeTimeoutMs,
      );
      stream.once('close', () => fail(refusal ?? new ProtocolError('connection closed during the handshake')));
      this.#pending.set(stream, (c) => {
        conn = c;
        c.on('error', (err: Error) => fail(new ProtocolError(`SSH handshake failed: ${err.message}`)));
        c.on('authentication', (ctx: ssh2.AuthContext) => {
          // the real authentication is the token in `config`; Go clients try "none" first
          if (ctx.method === 'password') ctx.accept();
          else ctx.reject(['password']);
        });
        refuseAgentChannels(c, opts.log);
        // one verdict per connection: requests pipelined behind a refused one are not evaluated
        let attempted = false;
        c.on('global request', (name, data, _wantReply, reply) => {
          if (name === REQUEST_PING) {
            reply(true);
            return;
          }
          if (name !== REQUEST_CONFIG) {
            reply(false, Buffer.from(`unexpected request ${JSON.stringify(name.slice(0, 64))}`));
            return;
          }
          if (attempted) {
            reply(false, Buffer.from('one config request per connection'));
            return;
          }
          attempted = true;
          let config: AgentConfig;
          try {
            config = decodeConfig(data);
          } catch (err) {
            reply(false, Buffer.from((err as Error).message));
            refuse(err as Error);
            return;
          }
          opts.authorize(config, opts.remote).then(
            (denied) => {
              if (settled) return;
              if (denied !== undefined) {
                reply(false, Buffer.from(denied || 'rejected'));
                refuse(new ProtocolError(denied || 'rejected'));
                return;
              }
              settled = true;
              clearTimeout(timer);
              reply(true);
              resolve(new AgentSession(c, stream, config, opts.remote, opts.onChannel));
            },
            (err: Error) => {
              reply(false, Buffer.from(`proxy error: ${err.message}`));
              fail(err);
            },
          );
        });
      });
      this.#ssh.injectSocket(stream as never);
    });
  }
}

/** Channels are opened by the proxy only: an agent must not make the proxy dial anything. */
function refuseAgentChannels(conn: TunnelConnection, log: Logger): void {
  conn.on('session', (_accept: unknown, reject: () => void) => {
    log.warn('refused a session channel that the agent tried to open');
    reject();
  });
  conn.on('tcpip', (_accept: unknown, reject: () => void, info: { destIP: string; destPort: number }) => {
    log.warn('refused a channel that the agent tried to open', { target: `${info.destIP}:${info.destPort}` });
    reject();
  });
}

let nextSessionId = 1;

/** One admitted agent, the proxy's end: opens `kubesphere` channels to the upstreams it announced. */
export class AgentSession extends TunnelSession {
  readonly id = nextSessionId++;
  readonly config: AgentConfig;
  readonly remote: string;
  readonly connectedAt = new Date();
  /** when the agent last pinged (its keepalive), or connected */
  lastSeen = new Date();
  #conn: TunnelConnection;
  #channels = 0;
  /** the control channel: undefined before it is asked for, null while it opens */
  #control: ServerChannel | null | undefined;
  #view: ReplicaView | undefined;
  #observe: ChannelObserver;

  constructor(
    conn: TunnelConnection,
    stream: Duplex,
    config: AgentConfig,
    remote: string,
    observe: ChannelObserver = () => {},
  ) {
    super(conn, stream);
    this.#observe = observe;
    this.#conn = conn;
    this.config = config;
    this.remote = remote;
    conn.on('global request', (name) => {
      if (name === REQUEST_PING) this.lastSeen = new Date();
    });
  }

  get name(): string {
    return this.config.name;
  }
  get channels(): number {
    return this.#channels;
  }

  /** A channel to `hostPort` through the agent; the agent dials it (and, for CHANNEL_TYPE_TLS, wraps it in TLS). */
  openChannel(hostPort: string, type: string = CHANNEL_TYPE): Promise<ServerChannel> {
    if (this.closed) {
      this.#observe(this, 0, 'closed');
      return Promise.reject(new TowerError('ECLOSED', 'the agent session is closed'));
    }
    if (this.#channels >= MAX_CHANNELS_PER_SESSION) {
      this.#observe(this, 0, 'limit');
      return Promise.reject(new Error(`the agent session has ${this.#channels} open channels, the limit`));
    }
    this.#channels++;
    const started = performance.now();
    return new Promise((resolve, reject) => {
      let done = false;
      const release = () => {
        this.#channels--;
      };
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        release();
        this.#observe(this, performance.now() - started, 'timeout');
        reject(
          new TimeoutError(`the agent did not open a channel to ${hostPort} within ${CHANNEL_OPEN_TIMEOUT_MS} ms`),
        );
      }, CHANNEL_OPEN_TIMEOUT_MS);
      this.#conn.openChannel(type, Buffer.from(hostPort), (err, channel) => {
        clearTimeout(timer);
        if (done) {
          if (channel) channel.close();
          return;
        }
        done = true;
        if (err) {
          release();
          this.#observe(this, performance.now() - started, 'refused');
          reject(new Error(`the agent refused a channel to ${hostPort}: ${err.message}`));
          return;
        }
        channel.once('close', release);
        this.#observe(this, performance.now() - started);
        resolve(channel);
      });
    });
  }

  /**
   * What the session's channels let the agent send ahead of what is read (their SSH window), asked
   * at each channel open and window adjustment: less than ssh2's 2 MiB bounds what a stream whose
   * client stops reading comes to hold here.
   */
  setChannelWindow(bytes: () => number): void {
    this.#conn.channelWindow = bytes;
  }

  /** whether the agent holds a session to every replica, and is told of them (FEATURE_REPLICAS) */
  get followsReplicas(): boolean {
    return this.config.features?.includes(FEATURE_REPLICAS) ?? false;
  }

  /**
   * Tells the agent which replicas live, through the control channel (opened at the first view);
   * a view sent while the channel opens replaces the one waiting.
   */
  tell(view: ReplicaView): void {
    if (!this.followsReplicas || this.closed) return;
    this.#view = view;
    if (this.#control === undefined) {
      this.#control = null;
      // not one of the channels counted and limited for requests
      this.#conn.openChannel(CHANNEL_TYPE_CONTROL, Buffer.alloc(0), (err, ch) => {
        if (err) {
          this.#control = undefined;
          return;
        }
        if (this.closed) {
          ch.close();
          return;
        }
        this.#control = ch;
        ch.on('error', () => undefined);
        // nothing comes back on it; read so that ssh2 can close it
        ch.resume();
        ch.write(encodeReplicaView(this.#view!));
      });
      return;
    }
    this.#control?.write(encodeReplicaView(view));
  }
}
