import { readFileSync } from 'node:fs';
import type { ClientChannel } from 'ssh2';
import { HostKeyMismatchError, TowerError } from '../errors.ts';
import type { Logger } from '../observe/log.ts';
import { dialTunnel, type TunnelClientSession } from '../tunnel/client.ts';
import {
  CHANNEL_TYPE_TLS,
  decodeReplicaView,
  FEATURE_AUTH_AT_AGENT,
  FEATURE_REPLICAS,
  FEATURE_TLS_AT_AGENT,
  MAX_CONTROL_LINE_BYTES,
  normalizeHostPort,
  type ReplicaView,
} from '../tunnel/protocol.ts';
import { VERSION } from '../version.ts';
import type { ChannelCarrier } from './carrier.ts';
import type { Credentials } from './credentials.ts';
import type { PolicyHolder } from './policy-source.ts';
import { dialWebSocket, HeldReplicaError, type ProxyConnection } from './dial.ts';

export const HANDSHAKE_TIMEOUT_MS = 30_000;
export const TOKEN_FILE_CHECK_MS = 10_000;
const MIN_PING_TIMEOUT_MS = 10_000;

/** What a session needs of the agent's options (AgentOptions). */
export interface SessionOptions {
  name: string;
  token: string;
  /** ws:// or wss:// URL, normalised */
  proxyUrl: string;
  proxyFingerprint?: string;
  /** PEM CA bundle that verifies a wss:// proxy's certificate (default: the system's roots) */
  proxyCa?: string;
  kubernetesService?: string;
  kubesphereService: string;
  /** make the TLS to the kube-apiserver here when the proxy offers it */
  tlsAtAgent: boolean;
  keepaliveMs: number;
  /** the member policy, judged here on every request; only a proxy that lets the agent read each request is joined */
  policy?: PolicyHolder;
  log: Logger;
}

/** What the session is given for one attempt, by the loop that holds the others. */
export interface SessionContext {
  /** read afresh for each attempt (token files rotate) */
  creds: Credentials;
  /** the replicas held now: the one reached is told not to upgrade (HELD_HEADER) when it is one of them */
  held: () => string[];
  /** carries the channels the proxy opens on this session */
  carrier: ChannelCarrier;
  /** what the replica said on its control channel, after the session took its own part of it */
  onView: (session: ProxySession, view: ReplicaView) => void;
}

/** The member's upstreams the agent announces: its kube-apiserver, then its ks-apiserver. */
export function upstreamsOf(opts: SessionOptions, creds: Credentials): [string, string] {
  return [
    normalizeHostPort(opts.kubernetesService ?? creds.hostPort, 443),
    normalizeHostPort(opts.kubesphereService, 80),
  ];
}

/**
 * One session to one proxy replica: dial (WebSocket) → SSH handshake → `config` → the control
 * channel → held until it ends (the connection closes, a keepalive ping goes unanswered, the token
 * file rotates, or close() here); `ended` says why. `server` is undefined with a proxy that names
 * no replica (e.g. a Go one).
 */
export class ProxySession {
  readonly server: string | undefined;
  readonly tunnel: TunnelClientSession;
  /** the upstreams announced: the kube-apiserver, then the ks-apiserver */
  readonly upstreams: [string, string];
  /** the replica said it drains: it does not count as held, and is not dialed again */
  draining = false;
  #log: Logger;
  #onView: SessionContext['onView'];

  private constructor(
    server: string | undefined,
    tunnel: TunnelClientSession,
    upstreams: [string, string],
    log: Logger,
    onView: SessionContext['onView'],
  ) {
    this.server = server;
    this.tunnel = tunnel;
    this.upstreams = upstreams;
    this.#log = log;
    this.#onView = onView;
  }

  /**
   * One session to whichever replica the address leads to, admitted and held; 'duplicate' when it
   * is one already held (hung up before SSH). Rejects with why it could not connect.
   */
  static async open(opts: SessionOptions, ctx: SessionContext): Promise<ProxySession | 'duplicate'> {
    const { creds } = ctx;
    const [kubernetes, kubesphere] = upstreamsOf(opts, creds);
    const allowed = new Set([kubernetes, kubesphere]);
    let connection: ProxyConnection;
    try {
      connection = await dialWebSocket(opts.proxyUrl, {
        timeoutMs: HANDSHAKE_TIMEOUT_MS,
        ca: opts.proxyCa,
        held: ctx.held(),
      });
    } catch (err) {
      if (err instanceof HeldReplicaError) return 'duplicate';
      throw err;
    }
    const { stream, features, serverId } = connection;
    const replicas = features.includes(FEATURE_REPLICAS) && serverId !== undefined;
    if (replicas && ctx.held().includes(serverId)) {
      stream.destroy();
      return 'duplicate';
    }
    const tlsHere = opts.tlsAtAgent && features.includes(FEATURE_TLS_AT_AGENT);
    // with both, no member credential is sent to the proxy at all
    const authHere = tlsHere && features.includes(FEATURE_AUTH_AT_AGENT);
    if (opts.policy && !authHere) {
      stream.destroy();
      // a proxy that makes the TLS, or holds the credentials, would carry what the agent cannot judge
      throw new TowerError(
        'EPOLICY',
        'this proxy does not let the agent make the TLS to the kube-apiserver and add its credentials ' +
          `(features ${FEATURE_TLS_AT_AGENT}, ${FEATURE_AUTH_AT_AGENT}), so the member policy could not be enforced: ` +
          'not connecting (use a tower proxy of this version or later)',
      );
    }
    const authorization =
      authHere && creds.bearerToken?.length ? `Bearer ${creds.bearerToken.toString('latin1').trim()}` : undefined;
    let unreadableSaid = false;
    // the control channel may open before dialTunnel resolves: it is read once the session exists
    const early: { session?: ProxySession; control?: ClientChannel } = {};
    const tunnel = await dialTunnel(stream, {
      config: {
        version: VERSION,
        name: opts.name,
        token: opts.token,
        kubernetesSvcHost: kubernetes,
        kubesphereSvcHost: kubesphere,
        // with TLS made here, the client certificate and key never leave the member cluster
        caData: tlsHere ? undefined : creds.caData,
        certData: tlsHere ? undefined : creds.certData,
        keyData: tlsHere ? undefined : creds.keyData,
        bearerToken: authHere ? undefined : creds.bearerToken,
        features: [
          ...(tlsHere ? [FEATURE_TLS_AT_AGENT] : []),
          ...(authHere ? [FEATURE_AUTH_AT_AGENT] : []),
          ...(replicas ? [FEATURE_REPLICAS] : []),
        ],
      },
      onControl: (channel) => {
        if (early.session) {
          early.session.#readControl(channel);
          return;
        }
        channel.on('error', () => undefined);
        early.control = channel;
      },
      expectFingerprint: opts.proxyFingerprint,
      handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
      onChannel: (hostPort, type, accept, reject) => {
        const tls = type === CHANNEL_TYPE_TLS;
        if (!allowed.has(hostPort) || (tls && hostPort !== kubernetes)) {
          opts.log.warn('refused a channel to an upstream this agent did not announce', { target: hostPort, type });
          reject();
          return;
        }
        // the agent reads the HTTP of every channel it can see into: TLS made here, or plain to ks-apiserver
        const http = tls || (hostPort === kubesphere && hostPort !== kubernetes);
        const policy = opts.policy;
        if (policy && !http) {
          opts.log.warn('refused a channel the member policy could not see into', { target: hostPort, type });
          reject();
          return;
        }
        if (!http && ctx.carrier.recording) {
          // an exec through it would go unrecorded
          if (!unreadableSaid)
            opts.log.warn(
              'refusing channels to the kube-apiserver that the agent cannot read: exec sessions are recorded ' +
                '(--record-exec), and this proxy did not take TLS made at the agent',
              { target: hostPort },
            );
          unreadableSaid = true;
          reject();
          return;
        }
        const upstream = tls ? 'kube-apiserver' : 'ks-apiserver';
        ctx.carrier.offer(
          hostPort,
          {
            tls: tls ? creds : undefined,
            http: http ? { authorization: tls ? authorization : undefined } : undefined,
            judge: policy && ((method, target, lines) => policy.judge(upstream, method, target, lines)),
          },
          accept,
          reject,
        );
      },
    }).catch((err: Error) => {
      if (err instanceof HostKeyMismatchError) opts.log.error(err.message);
      throw err;
    });
    const session = new ProxySession(
      replicas ? serverId : undefined,
      tunnel,
      [kubernetes, kubesphere],
      opts.log,
      ctx.onView,
    );
    early.session = session;
    session.#hold(opts, creds);
    if (early.control) session.#readControl(early.control);
    return session;
  }

  /** resolves with why the session ended, once it has */
  get ended(): Promise<string> {
    return this.tunnel.ended;
  }

  /** bytes through the session's connection so far */
  get bytes(): { read: number; written: number } {
    return this.tunnel.bytes;
  }

  close(): void {
    this.tunnel.close();
  }

  /** Keeps the session until it ends: keepalive pings, and a token file that rotates ends it. */
  #hold(opts: SessionOptions, creds: Credentials): void {
    const { tunnel } = this;
    const { keepaliveMs } = opts;
    tunnel.keepalive(keepaliveMs, () => tunnel.ping(Math.max(keepaliveMs, MIN_PING_TIMEOUT_MS)));
    if (creds.tokenFile) {
      const file = creds.tokenFile;
      const announced = creds.bearerToken;
      tunnel.every(TOKEN_FILE_CHECK_MS, () => {
        let now: Buffer;
        try {
          now = readFileSync(file);
        } catch {
          return;
        }
        // a rotated token is announced by reconnecting, which every v1 proxy understands
        if (announced && !now.equals(announced)) tunnel.close(`the token in ${file} rotated`);
      });
    }
  }

  /**
   * JSON lines of ReplicaView; a line that is not one ends the control channel (the session stays),
   * and once it is closed nothing more it sent is acted on, not even lines that had arrived with it.
   */
  #readControl(channel: ClientChannel): void {
    let buffered = '';
    let closed = false;
    const close = (why: string, fields: Record<string, unknown>) => {
      closed = true;
      buffered = '';
      this.#log.warn(why, { server: this.server, ...fields });
      channel.destroy();
    };
    channel.setEncoding('utf8');
    channel.on('error', () => undefined);
    channel.on('data', (d: string) => {
      if (closed) return;
      buffered += d;
      let nl: number;
      while (!closed && (nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.length > MAX_CONTROL_LINE_BYTES) {
          close('the proxy sent a control line over the limit; control channel closed', {
            limit: MAX_CONTROL_LINE_BYTES,
          });
          return;
        }
        let view: ReplicaView;
        try {
          view = decodeReplicaView(line);
        } catch (err) {
          close('the proxy sent a control message that is not one; control channel closed', {
            err: (err as Error).message,
          });
          return;
        }
        this.#heard(view);
      }
      if (buffered.length > MAX_CONTROL_LINE_BYTES)
        close('the proxy sent a control line over the limit; control channel closed', {
          limit: MAX_CONTROL_LINE_BYTES,
        });
    });
  }

  /** A view from this session's replica: its own part (who it is, whether it drains), then the loop's. */
  #heard(view: ReplicaView): void {
    if (this.server !== undefined && view.server !== this.server) {
      this.#log.warn('a proxy replica names itself differently on its control channel; ignored', {
        server: this.server,
        says: view.server,
      });
      return;
    }
    if (view.draining && !this.draining)
      this.#log.info('proxy replica drains; its session ends once its requests are done', { server: view.server });
    this.draining = view.draining;
    this.#onView(this, view);
  }
}
