import {
  Agent,
  type AgentOptions,
  type ClientRequestArgs,
  type IncomingMessage,
  type OutgoingHttpHeaders,
} from 'node:http';
import type { Duplex } from 'node:stream';
import { isIP, type Socket } from 'node:net';
import { connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls';
import type { ServerChannel } from 'ssh2';
import { AUDIT_ID_HEADER } from '../http/audit-id.ts';
import { CHANNEL_TYPE_TLS, FEATURE_TLS_AT_AGENT, hostOf, normalizeHostPort } from '../tunnel/protocol.ts';
import { MAX_CHANNELS_PER_SESSION, type AgentSession } from '../tunnel/server.ts';
import { dropBearerProtocol, forwardedHeaders } from './gateway/headers.ts';
import type { Route } from './gateway/route.ts';
import {
  impersonationHeaders,
  isIdentityHeader,
  type Identity,
  type ImpersonationRequest,
  type Reviewer,
} from './identity.ts';

const TLS_HANDSHAKE_TIMEOUT_MS = 15_000;
const IDLE_SOCKET_TIMEOUT_MS = 90_000;
/** every watch holds a connection: allow as many as the session has channels */
const MAX_SOCKETS_PER_SESSION = MAX_CHANNELS_PER_SESSION;
/** idle connections kept per session: below the client's concurrency, every burst would pay new handshakes */
const MAX_FREE_SOCKETS_PER_SESSION = 256;

/** Whom a request acts as in the member: the certificate's identity, or an impersonation the member allowed it. */
export type ActAs = Identity | ImpersonationRequest | undefined;

/**
 * Where the gateway sends a request: a member's kube-apiserver or ks-apiserver through one agent
 * session, or another replica that holds one. Each builds the headers it must receive itself, so
 * that nothing built for one reaches another (a retry goes to the next upstream with its own).
 */
export interface Upstream {
  /** what a retry must not pick again: the agent session, or the replica's id */
  readonly key: unknown;
  /** for logs: "session 12", "replica r2" */
  readonly via: string;
  /** for messages: "its agent", "replica r2" */
  readonly through: string;
  /** keep-alive pool of connections to it */
  readonly pool: Agent;
  /**
   * asks the member whether an impersonation is allowed, before the request goes; undefined where
   * the upstream settles that itself (a replica judges as this one would)
   */
  readonly reviewer: Reviewer | undefined;
  /** The request's headers as this upstream must receive them. */
  headers(req: IncomingMessage, route: Route, actAs: ActAs): OutgoingHttpHeaders;
  /** a fresh connection through a new channel (for upgrades, which leave the pool) */
  connect(): Promise<Duplex>;
}

/**
 * An HTTP server in a member cluster through one agent session: its channels are the pool's
 * connections, and the pool goes with the session.
 */
abstract class SessionUpstream implements Upstream {
  readonly session: AgentSession;
  /** "host:port" the agent dials */
  readonly hostPort: string;
  readonly hostHeader: string;
  readonly pool: Agent;
  readonly through = 'its agent';
  abstract readonly reviewer: Reviewer | undefined;
  /** the Authorization to send instead of the client's, if any */
  protected abstract readonly authorization: string | undefined;
  /** whether the client's own Authorization goes through (ks-apiserver authenticates its users) */
  protected abstract readonly keepsClientAuthorization: boolean;

  constructor(session: AgentSession, hostPort: string, defaultPort: number, maxFreeSockets: number) {
    this.session = session;
    this.hostPort = hostPort;
    this.hostHeader = hostPort.replace(new RegExp(`:${defaultPort}$`), '');
    this.pool = new ChannelAgent(this, {
      keepAlive: true,
      maxSockets: MAX_SOCKETS_PER_SESSION,
      maxFreeSockets,
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

  /**
   * Who the request acts as is never the client's word: on a certificate's route its Authorization,
   * Impersonate-*, X-Remote-* and bearer subprotocol go, and the certificate's identity (or an
   * impersonation the member allowed it) is sent. Otherwise only the client's Authorization is
   * dropped, unless the member authenticates clients itself (ks-apiserver). The Audit-ID is tower's.
   */
  headers(req: IncomingMessage, route: Route, actAs: ActAs): OutgoingHttpHeaders {
    const certificate = route.identity !== undefined;
    const dropAuth = !this.keepsClientAuthorization;
    const out = forwardedHeaders(req, (k) => (certificate ? isIdentityHeader(k) : dropAuth && k === 'authorization'));
    if (certificate) dropBearerProtocol(out);
    out.host = this.hostHeader;
    if (this.authorization) out.authorization = this.authorization;
    if (actAs) impersonationHeaders(out, actAs);
    // kube-apiserver writes it into the request's audit events (and answers it)
    if (route.auditId) out[AUDIT_ID_HEADER] = route.auditId;
    return out;
  }

  abstract connect(): Promise<Duplex>;
}

/**
 * How the proxy reaches a member's kube-apiserver: TLS made by the proxy inside a tunnel channel,
 * with the credentials that this very session's agent announced.
 */
export class MemberApiserver extends SessionUpstream implements Reviewer {
  readonly host: string;
  readonly reviewer: Reviewer = this;
  protected readonly authorization: string | undefined;
  protected readonly keepsClientAuthorization = false;
  #context: SecureContext | undefined;

  constructor(session: AgentSession) {
    super(session, normalizeHostPort(session.config.kubernetesSvcHost, 443), 443, MAX_FREE_SOCKETS_PER_SESSION);
    this.host = hostOf(this.hostPort);
    const token = session.config.bearerToken?.toString('utf8').trim();
    this.authorization = token ? `Bearer ${token}` : undefined;
  }

  ownHeaders(): OutgoingHttpHeaders {
    const own: OutgoingHttpHeaders = { host: this.hostHeader };
    if (this.authorization) own.authorization = this.authorization;
    return own;
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
export class MemberKubesphere extends SessionUpstream {
  /** ks-apiserver authenticates its users itself: requests there act as no certificate */
  readonly reviewer = undefined;
  protected readonly authorization = undefined;
  protected readonly keepsClientAuthorization = true;

  constructor(session: AgentSession) {
    super(session, normalizeHostPort(session.config.kubesphereSvcHost, 80), 80, 32);
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
  #member: { connect(): Promise<Duplex> };
  constructor(member: { connect(): Promise<Duplex> }, opts: AgentOptions) {
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
