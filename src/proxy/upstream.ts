import { Agent, type AgentOptions, type ClientRequestArgs } from 'node:http';
import type { Duplex } from 'node:stream';
import { isIP, type Socket } from 'node:net';
import { connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls';
import type { ServerChannel } from 'ssh2';
import { CHANNEL_TYPE_TLS, FEATURE_TLS_AT_AGENT, hostOf, normalizeHostPort } from '../tunnel/protocol.ts';
import { MAX_CHANNELS_PER_SESSION, type AgentSession } from '../tunnel/server.ts';

const TLS_HANDSHAKE_TIMEOUT_MS = 15_000;
const IDLE_SOCKET_TIMEOUT_MS = 90_000;
/** every watch holds a connection: allow as many as the session has channels */
const MAX_SOCKETS_PER_SESSION = MAX_CHANNELS_PER_SESSION;
/** idle connections kept per session: below the client's concurrency, every burst would pay new handshakes */
const MAX_FREE_SOCKETS_PER_SESSION = 256;

/** An HTTP server in a member cluster, reached through one agent session, or through another replica. */
export interface Upstream {
  /** the agent session, when this replica holds it */
  readonly session?: AgentSession;
  /** what a retry must not pick again: the agent session, or the replica's id */
  readonly key: unknown;
  /** for logs: "session 12", "replica r2" */
  readonly via: string;
  /** "host:port" the agent dials */
  readonly hostPort: string;
  /** the Host header to send */
  readonly hostHeader: string;
  /** keep-alive pool of connections through this session */
  readonly pool: Agent;
  /** the Authorization to send instead of the client's; undefined with keepsClientAuthorization */
  readonly authorization: string | undefined;
  /** whether the client's own Authorization header goes through (ks-apiserver authenticates its users) */
  readonly keepsClientAuthorization: boolean;
  /** a fresh connection through a new channel (for upgrades, which leave the pool) */
  connect(): Promise<Duplex>;
}

/**
 * How the proxy reaches a member's kube-apiserver: TLS made by the proxy inside a tunnel channel,
 * with the credentials that this very session's agent announced.
 */
export class MemberApiserver implements Upstream {
  readonly session: AgentSession;
  readonly hostPort: string;
  readonly host: string;
  readonly hostHeader: string;
  readonly keepsClientAuthorization = false;
  /** keep-alive pool of TLS connections through this session */
  readonly pool: Agent;
  #bearer: string | undefined;
  #context: SecureContext | undefined;

  constructor(session: AgentSession) {
    this.session = session;
    this.hostPort = normalizeHostPort(session.config.kubernetesSvcHost, 443);
    this.host = hostOf(this.hostPort);
    this.hostHeader = this.hostPort.replace(/:443$/, '');
    const token = session.config.bearerToken?.toString('utf8').trim();
    this.#bearer = token ? `Bearer ${token}` : undefined;
    this.pool = new ChannelAgent(this, {
      keepAlive: true,
      maxSockets: MAX_SOCKETS_PER_SESSION,
      maxFreeSockets: MAX_FREE_SOCKETS_PER_SESSION,
      timeout: IDLE_SOCKET_TIMEOUT_MS,
    });
    session.once('close', () => this.pool.destroy());
  }

  get authorization(): string | undefined {
    return this.#bearer;
  }
  get key(): unknown {
    return this.session;
  }
  get via(): string {
    return `session ${this.session.id}`;
  }

  /** parsed once per session: the agent's CA and client certificate */
  #secureContext(): SecureContext {
    if (!this.#context) {
      const c = this.session.config;
      this.#context = createSecureContext({
        ca: c.caData && c.caData.length > 0 ? c.caData : undefined,
        cert: c.certData && c.certData.length > 0 ? c.certData : undefined,
        key: c.keyData && c.keyData.length > 0 ? c.keyData : undefined,
      });
    }
    return this.#context;
  }

  /** whether the agent makes the TLS (negotiated), so that the proxy sends plain HTTP into the channel */
  get tlsAtAgent(): boolean {
    return this.session.config.features?.includes(FEATURE_TLS_AT_AGENT) ?? false;
  }

  /** A fresh connection to the apiserver through a new channel (for upgrades, which leave the pool). */
  async connect(): Promise<Duplex> {
    if (this.tlsAtAgent) return asSocket(await this.session.openChannel(this.hostPort, CHANNEL_TYPE_TLS));
    const channel = await this.session.openChannel(this.hostPort);
    const socket = tlsConnect({
      socket: channel as unknown as Socket,
      host: this.host,
      servername: isIP(this.host) ? undefined : this.host,
      secureContext: this.#secureContext(),
      ALPNProtocols: ['http/1.1'],
    });
    // ssh2 channels never close while unread: tear the channel down with the TLS socket
    socket.once('close', () => channel.destroy());
    channel.once('close', () => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          socket.destroy(
            new Error(`TLS handshake with ${this.hostPort} timed out after ${TLS_HANDSHAKE_TIMEOUT_MS} ms`),
          ),
        TLS_HANDSHAKE_TIMEOUT_MS,
      );
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    socket.setNoDelay(true);
    return socket;
  }
}

/**
 * A member's ks-apiserver (the agent's KubeSphereSvcHost): plain HTTP through `kubesphere`
 * channels; the client's Authorization goes through, as ks-apiserver authenticates its users.
 */
export class MemberKubesphere implements Upstream {
  readonly session: AgentSession;
  readonly hostPort: string;
  readonly hostHeader: string;
  readonly pool: Agent;
  readonly authorization = undefined;
  readonly keepsClientAuthorization = true;

  constructor(session: AgentSession) {
    this.session = session;
    this.hostPort = normalizeHostPort(session.config.kubesphereSvcHost, 80);
    this.hostHeader = this.hostPort.replace(/:80$/, '');
    this.pool = new ChannelAgent(this, {
      keepAlive: true,
      maxSockets: MAX_SOCKETS_PER_SESSION,
      maxFreeSockets: 32,
      timeout: IDLE_SOCKET_TIMEOUT_MS,
    });
    session.once('close', () => this.pool.destroy());
  }

  get key(): unknown {
    return this.session;
  }
  get via(): string {
    return `session ${this.session.id}`;
  }

  async connect(): Promise<Duplex> {
    return asSocket(await this.session.openChannel(this.hostPort));
  }
}

/**
 * Node's HTTP client and its keep-alive pool call a few net.Socket methods that a channel lacks;
 * on a channel they have nothing to do (no TCP underneath, lifetimes are managed here).
 */
function asSocket(channel: ServerChannel): Duplex {
  const c = channel as ServerChannel & Record<string, unknown>;
  for (const m of ['setKeepAlive', 'setNoDelay', 'ref', 'unref']) c[m] = () => c;
  // net.Socket's inactivity timeout, which the pool uses to drop idle connections
  let idleMs = 0;
  let idle: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(idle);
    idle = idleMs > 0 ? setTimeout(() => channel.emit('timeout'), idleMs) : undefined;
  };
  channel.on('data', () => {
    if (idleMs > 0) arm();
  });
  channel.once('close', () => clearTimeout(idle));
  // as net.Socket: a callback is a 'timeout' listener, and setTimeout(0, cb) removes it again.
  // Node's HTTP client does exactly that for each request on a reused connection
  c.setTimeout = (ms: number, cb?: () => void) => {
    if (cb) {
      if (ms === 0) channel.removeListener('timeout', cb);
      else channel.once('timeout', cb);
    }
    idleMs = ms;
    arm();
    return c;
  };
  c.destroySoon = () => {
    channel.end();
  };
  return channel;
}

/** A keep-alive pool whose connections are the upstream's own (a channel, or a TLS connection to a replica). */
export class ChannelAgent extends Agent {
  #member: Upstream;
  constructor(member: Upstream, opts: AgentOptions) {
    super(opts);
    this.#member = member;
  }

  override createConnection(_opts: ClientRequestArgs, cb?: (err: Error | null, stream: Duplex) => void): undefined {
    this.#member.connect().then(
      (s) => cb?.(null, s),
      (err: Error) => cb?.(err, undefined as never),
    );
    return undefined;
  }
}
