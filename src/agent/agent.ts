import { readFileSync } from 'node:fs';
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls';
import type { ClientChannel } from 'ssh2';
import { setTimeout as sleep } from 'node:timers/promises';
import { TowerError } from '../errors.ts';
import type { Logger } from '../observe/log.ts';
import { ConfigRejectedError, dialTunnel, HostKeyMismatchError, type TunnelClientSession } from '../tunnel/client.ts';
import {
  CHANNEL_TYPE_TLS,
  decodeReplicaView,
  FEATURE_AUTH_AT_AGENT,
  FEATURE_REPLICAS,
  FEATURE_TLS_AT_AGENT,
  hostOf,
  MAX_CONTROL_LINE_BYTES,
  MAX_REPLICAS,
  normalizeHostPort,
  splitHostPort,
  UNAUTHORIZED,
  type ReplicaView,
} from '../tunnel/protocol.ts';
import { rawStatus } from '../http/status.ts';
import { CHANNEL_BUFFER_BYTES } from '../tunnel/ssh.ts';
import { StallBudget, type Stall } from '../tunnel/stall-budget.ts';
import { VERSION } from '../version.ts';
import { ExchangeViolation, HttpExchange } from './exchange.ts';
import type { Credentials } from './credentials.ts';
import { dialWebSocket, HeldReplicaError, type ProxyConnection } from './dial.ts';

export const HANDSHAKE_TIMEOUT_MS = 30_000;
export const UPSTREAM_DIAL_TIMEOUT_MS = 10_000;
export const TOKEN_FILE_CHECK_MS = 10_000;
const BACKOFF_BASE_MS = 1000;
/** a lost session is retried after a random delay below this, so that agents don't return in lockstep */
const RECONNECT_SPREAD_MS = 1000;
const MIN_PING_TIMEOUT_MS = 10_000;
/** after a new session, the next one (for another replica) is dialed within this, at random */
const NEXT_SESSION_SPREAD_MS = 3_000;
/** dialing the Service again after reaching a replica already held */
const DUPLICATE_STEP_MS = 1_000;
const DUPLICATES_AT_STEADY_PACE = 30;
/** --max-stalled-memory: beside an idle agent's ~80 MiB, within a 200 MB memory limit */
export const DEFAULT_MAX_STALLED_BYTES = 24 * 2 ** 20;
/**
 * what an answer the tunnel cannot take holds here at most: the channel's buffer, and the member
 * connection's (TLS and socket) before it pauses
 */
const STALLED_ANSWER_BYTES = 3 * CHANNEL_BUFFER_BYTES;

export interface AgentOptions {
  name: string;
  token: string;
  /** ws:// or wss:// URL, normalised */
  proxyUrl: string;
  /** reads the credentials afresh at each connection (token files rotate) */
  credentials: () => Credentials;
  kubernetesService?: string;
  kubesphereService: string;
  keepaliveMs: number;
  /** 0: never give up */
  maxRetry: number;
  maxRetryIntervalMs: number;
  proxyFingerprint?: string;
  /** PEM CA bundle that verifies a wss:// proxy's certificate (default: the system's roots) */
  proxyCa?: string;
  /** connect to a proxy that nothing verifies (no fingerprint, not wss://) */
  insecureSkipProxyVerification?: boolean;
  /** make the TLS to the kube-apiserver here when the proxy offers it (false: always as Go agents do) */
  tlsAtAgent: boolean;
  /** channels the proxy may hold open at once; more are refused */
  maxChannels: number;
  /** what answers the tunnel cannot take may hold, in all, before requests are answered 429 here */
  maxStalledBytes?: number;
  /** each upstream dial's time in seconds, and whether it failed (metrics, with --health-port) */
  onDial?: (seconds: number, failed: boolean) => void;
  log: Logger;
}

/** What the agent has done so far, read by /readyz and /metrics; plain numbers, nothing on the hot path. */
export interface AgentStats {
  connected: boolean;
  /** sessions held now: one per proxy replica */
  sessions: number;
  /** replicas the proxy says live (1 with a proxy that does not say) */
  replicas: number;
  /** sessions that ended and were dialed again */
  reconnects: number;
  /** failed connection attempts, in total */
  failures: number;
  /** channels closed because the proxy or the member broke HTTP/1.1 on them */
  violations: number;
  /** bytes reserved now by answers the tunnel cannot take (their member connections paused) */
  stalledBytes: number;
  /** requests answered 429 here (or channels refused) because those held --max-stalled-memory */
  stalledRefusals: number;
  /** bytes through ended sessions' connections; the live ones' are added when read */
  bytesRead: number;
  bytesWritten: number;
}

/** One session to one proxy replica (`server` is undefined with a proxy that names none, e.g. a Go one). */
interface Held {
  server: string | undefined;
  session: TunnelClientSession;
  bytes: () => { read: number; written: number };
  /** the replica said it drains: it does not count as held, and is not dialed again */
  draining: boolean;
}

/**
 * The agent: holds a tunnel to every proxy replica (one with a proxy that names no replicas) and
 * pipes the channels it is given to its upstreams. It dials its one --proxy-server address (a
 * Service in front of the replicas) until it holds a session to each replica the proxy says lives.
 */
export class TowerAgent {
  #opts: AgentOptions;
  #log: Logger;
  #stopped = false;
  #held = new Set<Held>();
  /** the live replicas as the proxy last said (undefined: it never said, i.e. one session will do) */
  #replicas: string[] | undefined;
  /** ends the idle wait when something changes */
  #wake: (() => void) | undefined;
  #stopping = new AbortController();
  #channels = 0;
  #stalled: StallBudget;
  #stats = { reconnects: 0, failures: 0, bytesRead: 0, bytesWritten: 0, violations: 0, stalledRefusals: 0 };

  constructor(opts: AgentOptions) {
    // the command checks this with a friendlier message; here it holds for every caller
    if (!proxyVerification(opts.proxyUrl, opts.proxyFingerprint, opts.proxyCa) && !opts.insecureSkipProxyVerification) {
      throw new TowerError(
        'EUNVERIFIED',
        `refusing to connect to ${opts.proxyUrl}: nothing verifies that it is the proxy (give a fingerprint, or a wss:// address)`,
      );
    }
    this.#opts = opts;
    this.#log = opts.log;
    this.#stalled = new StallBudget(opts.maxStalledBytes ?? DEFAULT_MAX_STALLED_BYTES, STALLED_ANSWER_BYTES);
  }

  /** channels open now */
  get channels(): number {
    return this.#channels;
  }

  /** counters so far, the live connections' bytes included */
  get stats(): AgentStats {
    let read = this.#stats.bytesRead;
    let written = this.#stats.bytesWritten;
    for (const h of this.#held) {
      const b = h.bytes();
      read += b.read;
      written += b.written;
    }
    return {
      ...this.#stats,
      connected: this.#held.size > 0,
      sessions: this.#held.size,
      replicas: this.#replicas?.length ?? 1,
      bytesRead: read,
      bytesWritten: written,
      stalledBytes: this.#stalled.reservedBytes,
    };
  }

  stop(): void {
    this.#stopped = true;
    for (const h of this.#held) h.session.close();
    this.#stopping.abort();
  }

  /**
   * Whether to dial: when no session is held (a draining one does not count), or a live replica
   * the proxy named is not held yet. A proxy that names none needs one session.
   */
  #wantsSession(): boolean {
    const held = new Set([...this.#held].filter((h) => !h.draining).map((h) => h.server));
    if (held.size === 0) return true;
    return this.#replicas?.some((id) => !held.has(id)) ?? false;
  }

  /** Resolves when stopped; rejects with a one-line reason when the agent must give up. */
  async run(): Promise<void> {
    let failures = 0;
    let duplicates = 0;
    let connectedJustNow = false;
    let lastError: Error | undefined;
    while (!this.#stopped) {
      if (!this.#wantsSession()) {
        await this.#idle();
        continue;
      }
      if (failures > 0) {
        const { maxRetry } = this.#opts;
        if (maxRetry > 0 && failures >= maxRetry && this.#held.size === 0) {
          throw new TowerError(
            'EGAVEUP',
            `gave up after ${failures} failed attempts (--max-retry ${maxRetry}): ${lastError?.message}`,
          );
        }
        const delay = backoffDelay(failures, this.#opts.maxRetryIntervalMs);
        this.#log.warn('connection failed; retrying', {
          attempt: maxRetry > 0 ? `${failures}/${maxRetry}` : failures,
          in: `${(delay / 1000).toFixed(1)}s`,
          err: lastError?.message,
        });
        await this.#sleep(delay);
        if (this.#stopped) break;
      } else if (duplicates > 0) {
        // the Service picked a replica already held: try again soon, spread so that agents do not dial in step
        await this.#sleep(duplicateDelay(duplicates, this.#opts.maxRetryIntervalMs));
        if (this.#stopped) break;
      } else if (connectedJustNow) {
        // a further session is not urgent: agents that hold none yet get the proxies' handshakes first
        await this.#sleep(Math.random() * NEXT_SESSION_SPREAD_MS);
        if (this.#stopped) break;
      }
      connectedJustNow = false;
      let creds: Credentials;
      let held: Held | 'duplicate';
      try {
        creds = this.#opts.credentials();
        held = await this.#connect(creds);
      } catch (err) {
        // refused while another replica holds this agent's session: replicas that disagree for a moment
        // (a token rotating, a Cluster not yet seen), not a wrong token; retried with backoff
        if (err instanceof ConfigRejectedError && err.message.includes(UNAUTHORIZED) && this.#held.size === 0) {
          throw new TowerError(
            'EUNAUTHORIZED',
            `the proxy refused agent "${this.#opts.name}": ${err.message} (check --name and --token; the proxy's host prints them with: tower token ${this.#opts.name})`,
          );
        }
        failures++;
        this.#stats.failures++;
        lastError = err as Error;
        continue;
      }
      failures = 0;
      if (held === 'duplicate') {
        duplicates++;
        continue;
      }
      duplicates = 0;
      connectedJustNow = true;
      // loudly, at every connection: each one hands this cluster's requests to whoever answered
      if (!proxyVerification(this.#opts.proxyUrl, this.#opts.proxyFingerprint, this.#opts.proxyCa)) {
        this.#log.warn(
          "INSECURE: the proxy is not verified (--insecure-skip-proxy-verification): whoever answers at its address gets this cluster's requests; pin its host key with --proxy-fingerprint",
          { fingerprint: held.session.hostKeyFingerprint },
        );
      }
      this.#log.info('connected to proxy', {
        proxy: this.#opts.proxyUrl,
        cluster: this.#opts.name,
        server: held.server,
        sessions: this.#held.size,
        upstream: this.#upstreams(creds)[0],
        credentials: creds.origin,
      });
      void this.#hold(held, creds).then((why) => {
        this.#held.delete(held);
        this.#retire(held);
        if (this.#stopped) return;
        this.#stats.reconnects++;
        const expected =
          held.draining ||
          (held.server !== undefined && this.#replicas !== undefined && !this.#replicas.includes(held.server));
        // a replica that drained or left ends its sessions on purpose: said, not warned
        if (expected)
          this.#log.info('disconnected from proxy; reconnecting', {
            why: `${why} (the replica ${held.draining ? 'drained' : 'left'})`,
            server: held.server,
          });
        else this.#log.warn('disconnected from proxy; reconnecting', { why, server: held.server });
        // a lost session is redialed after a random delay, so that agents don't return in lockstep
        setTimeout(() => this.#wake?.(), Math.random() * RECONNECT_SPREAD_MS);
      });
    }
  }

  #retire(h: Held): void {
    const b = h.bytes();
    this.#stats.bytesRead += b.read;
    this.#stats.bytesWritten += b.written;
    h.bytes = () => ({ read: 0, written: 0 });
  }

  /** What a replica says on its control channel: the live set, and whether it drains. */
  #onView(held: Held, view: ReplicaView): void {
    if (held.server !== undefined && view.server !== held.server) {
      this.#log.warn('a proxy replica names itself differently on its control channel; ignored', {
        server: held.server,
        says: view.server,
      });
      return;
    }
    if (view.draining && !held.draining)
      this.#log.info('proxy replica drains; its session ends once its requests are done', { server: view.server });
    held.draining = view.draining;
    const before = this.#replicas?.join(',');
    this.#replicas = view.servers.slice(0, MAX_REPLICAS);
    if (before !== this.#replicas.join(','))
      this.#log.info('proxy replicas', { replicas: this.#replicas.join(','), from: view.server });
    // a replica that left (its Lease gone) is not held on to
    for (const h of this.#held) {
      if (h !== held && h.server !== undefined && !view.servers.includes(h.server) && !h.draining) {
        this.#log.info('closing the session to a replica that is no longer live', {
          server: h.server,
          from: view.server,
        });
        h.session.close();
      }
    }
    this.#wake?.();
  }

  #upstreams(creds: Credentials): string[] {
    return [
      normalizeHostPort(this.#opts.kubernetesService ?? creds.hostPort, 443),
      normalizeHostPort(this.#opts.kubesphereService, 80),
    ];
  }

  /** One session to whichever replica the address leads to; 'duplicate' (hung up before SSH) when it is one already held. */
  async #connect(creds: Credentials): Promise<Held | 'duplicate'> {
    const [kubernetes, kubesphere] = this.#upstreams(creds) as [string, string];
    const allowed = new Set([kubernetes, kubesphere]);
    const held = [...this.#held].map((h) => h.server).filter((id): id is string => id !== undefined);
    let connection: ProxyConnection;
    try {
      connection = await dialWebSocket(this.#opts.proxyUrl, {
        timeoutMs: HANDSHAKE_TIMEOUT_MS,
        ca: this.#opts.proxyCa,
        held,
      });
    } catch (err) {
      if (err instanceof HeldReplicaError) return 'duplicate';
      throw err;
    }
    const { stream, features, serverId } = connection;
    const replicas = features.includes(FEATURE_REPLICAS) && serverId !== undefined;
    if (replicas && [...this.#held].some((h) => h.server === serverId)) {
      stream.destroy();
      return 'duplicate';
    }
    const fresh: Held = {
      server: replicas ? serverId : undefined,
      session: undefined as never,
      bytes: () => stream.bytes,
      draining: false,
    };
    const tlsHere = this.#opts.tlsAtAgent && features.includes(FEATURE_TLS_AT_AGENT);
    // with both, no member credential is sent to the proxy at all
    const authHere = tlsHere && features.includes(FEATURE_AUTH_AT_AGENT);
    const authorization =
      authHere && creds.bearerToken?.length ? `Bearer ${creds.bearerToken.toString('latin1').trim()}` : undefined;
    fresh.session = await dialTunnel(stream, {
      config: {
        version: VERSION,
        name: this.#opts.name,
        token: this.#opts.token,
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
      onControl: (channel) => this.#readControl(fresh, channel),
      expectFingerprint: this.#opts.proxyFingerprint,
      handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
      onChannel: (hostPort, type, accept, reject) => {
        const tls = type === CHANNEL_TYPE_TLS;
        if (!allowed.has(hostPort) || (tls && hostPort !== kubernetes)) {
          this.#log.warn('refused a channel to an upstream this agent did not announce', { target: hostPort, type });
          reject();
          return;
        }
        if (this.#channels >= this.#opts.maxChannels) {
          this.#log.warn('refused a channel: the proxy holds as many open as --max-channels allows', {
            open: this.#channels,
          });
          reject();
          return;
        }
        // the agent reads the HTTP of every channel it can see into: TLS made here, or plain to ks-apiserver
        const http = tls || (hostPort === kubesphere && hostPort !== kubernetes);
        if (this.#stalled.exhausted) {
          // the member is not dialed: an HTTP channel gets its 429 here, one the agent cannot read into is refused
          if (http) {
            this.#answerStalled(accept);
            return;
          }
          this.#stats.stalledRefusals++;
          this.#log.debug(1, 'refused a channel: answers the tunnel cannot take hold --max-stalled-memory', {
            stalled: this.#stalled.reservedBytes,
          });
          reject();
          return;
        }
        this.#pipe(
          hostPort,
          tls ? creds : undefined,
          http ? { authorization: tls ? authorization : undefined } : undefined,
          accept,
          reject,
        );
      },
    }).catch((err: Error) => {
      if (err instanceof HostKeyMismatchError) this.#log.error(err.message);
      throw err;
    });
    this.#held.add(fresh);
    return fresh;
  }

  /**
   * JSON lines of ReplicaView; a line that is not one ends the control channel (the session stays),
   * and once it is closed nothing more it sent is acted on, not even lines that had arrived with it.
   */
  #readControl(held: Held, channel: ClientChannel): void {
    let buffered = '';
    let closed = false;
    const close = (why: string, fields: Record<string, unknown>) => {
      closed = true;
      buffered = '';
      this.#log.warn(why, { server: held.server, ...fields });
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
        this.#onView(held, view);
      }
      if (buffered.length > MAX_CONTROL_LINE_BYTES)
        close('the proxy sent a control line over the limit; control channel closed', {
          limit: MAX_CONTROL_LINE_BYTES,
        });
    });
  }

  /**
   * Dials the upstream first (with TLS when `tls` holds its credentials), so that a dead upstream
   * refuses the channel instead of half-opening it.
   */
  #pipe(
    hostPort: string,
    tls: Credentials | undefined,
    http: { authorization: string | undefined } | undefined,
    accept: () => ClientChannel,
    reject: () => void,
  ): void {
    const hp = splitHostPort(hostPort);
    if (!hp) {
      reject();
      return;
    }
    this.#channels++;
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        this.#channels--;
      }
    };
    const host = hostOf(hostPort);
    const upstream: Socket = tls
      ? tlsConnect({
          host,
          port: hp.port,
          servername: isIP(host) ? undefined : host,
          timeout: UPSTREAM_DIAL_TIMEOUT_MS,
          secureContext: secureContextOf(tls),
          ALPNProtocols: ['http/1.1'],
        })
      : netConnect({ host, port: hp.port, timeout: UPSTREAM_DIAL_TIMEOUT_MS });
    upstream.setNoDelay(true);
    const onDial = this.#opts.onDial;
    const started = onDial ? performance.now() : 0;
    const onDialError = (err: Error) => {
      release();
      onDial?.((performance.now() - started) / 1000, true);
      this.#log.warn('cannot reach upstream', { target: hostPort, err: err.message });
      reject();
    };
    upstream.once('error', onDialError);
    upstream.once('timeout', () => upstream.destroy(new Error(`no connection within ${UPSTREAM_DIAL_TIMEOUT_MS} ms`)));
    upstream.once(tls ? 'secureConnect' : 'connect', () => {
      upstream.off('error', onDialError);
      onDial?.((performance.now() - started) / 1000, false);
      upstream.setTimeout(0);
      const ch = accept();
      upstream.on('error', () => ch.destroy());
      ch.on('error', () => upstream.destroy());
      const stall = this.#stalled.stream();
      if (http) this.#pipeExchange(ch, upstream, http.authorization, hostPort, stall);
      else {
        // the member's side by hand, so that an answer the tunnel cannot take counts as stalled
        upstream.on('data', (d: Buffer) => {
          if (!ch.write(d)) {
            upstream.pause();
            stall.hold();
          }
        });
        ch.on('drain', () => {
          stall.release();
          upstream.resume();
        });
        upstream.once('end', () => ch.end());
        ch.pipe(upstream);
      }
      // an ssh2 channel that nobody reads never closes: end both together
      ch.once('close', () => {
        release();
        stall.end();
        upstream.destroy();
      });
      upstream.once('close', () => {
        release();
        stall.end();
        // what the member sent last may still wait for the tunnel (its window, a full transport): the
        // channel closes once that has left, or the proxy would get its close first
        if (ch.writableEnded && !ch.writableFinished) ch.once('finish', () => ch.destroy());
        else ch.destroy();
      });
    });
  }

  /**
   * Both ways as pipe() does (backpressure, end), through an HttpExchange: one request at a time,
   * each answered in full before the next; the member's credentials join each request head here,
   * never earlier. A head and the bytes after it leave in one write. A violation ends the channel.
   * While the member's side waits for the tunnel, the answer counts as stalled; while stalled
   * answers hold --max-stalled-memory, each request is answered 429 here and the channel ends.
   */
  #pipeExchange(
    ch: ClientChannel,
    upstream: Socket,
    authorization: string | undefined,
    hostPort: string,
    stall: Stall,
  ): void {
    const exchange = new HttpExchange({
      authorization,
      toMember: (b) => {
        upstream.write(b);
      },
      toProxy: (b) => {
        ch.write(b);
      },
      onDone: () => {
        ch.end();
        upstream.end();
      },
      refuse: () => (this.#stalled.exhausted ? this.#stalledAnswer() : undefined),
    });
    const violated = (err: unknown) => {
      this.#closeBroken(err, hostPort);
      ch.destroy();
      upstream.destroy();
    };
    ch.on('data', (d: Buffer) => {
      if (upstream.destroyed) return;
      upstream.cork();
      try {
        exchange.fromProxy(d);
      } catch (err) {
        violated(err);
        return;
      } finally {
        upstream.uncork();
      }
      if (upstream.writableNeedDrain) ch.pause();
    });
    upstream.on('drain', () => ch.resume());
    ch.once('end', () => upstream.end());
    upstream.on('data', (d: Buffer) => {
      if (ch.destroyed) return;
      try {
        exchange.fromMember(d);
      } catch (err) {
        violated(err);
        return;
      }
      if (ch.writableNeedDrain) {
        upstream.pause();
        stall.hold();
      }
    });
    ch.on('drain', () => {
      stall.release();
      upstream.resume();
    });
    upstream.once('end', () => {
      try {
        exchange.memberEnded();
      } catch (err) {
        violated(err);
        return;
      }
      ch.end();
    });
  }

  /**
   * A channel opened while stalled answers hold --max-stalled-memory: the member is not dialed; the
   * channel's request is answered 429 here, and the channel ends.
   */
  #answerStalled(accept: () => ClientChannel): void {
    this.#channels++;
    const ch = accept();
    ch.once('close', () => {
      this.#channels--;
    });
    ch.on('error', () => undefined);
    const exchange = new HttpExchange({
      toMember: () => undefined,
      toProxy: (b) => {
        ch.write(b);
      },
      onDone: () => {
        ch.end();
      },
      refuse: () => this.#stalledAnswer(),
    });
    ch.on('data', (d: Buffer) => {
      try {
        exchange.fromProxy(d);
      } catch (err) {
        this.#closeBroken(err);
        ch.destroy();
      }
    });
  }

  /**
   * Logs why a channel is being closed: it broke HTTP/1.1 (counted as a violation), or reading it
   * failed in the agent itself, which ends that channel and never the process.
   */
  #closeBroken(err: unknown, target?: string): void {
    if (err instanceof ExchangeViolation) {
      this.#stats.violations++;
      this.#log.warn('closed a channel that broke HTTP/1.1; nothing more of it was forwarded', {
        target,
        err: err.message,
      });
      return;
    }
    this.#log.error('closed a channel after an error in the agent; nothing more of it was forwarded', {
      target,
      err: (err as Error)?.stack ?? String(err),
    });
  }

  /** The 429 (a Kubernetes Status) that the agent answers itself while stalled answers hold --max-stalled-memory. */
  #stalledAnswer(): Buffer {
    this.#stats.stalledRefusals++;
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    const { reservedBytes, maxBytes } = this.#stalled;
    this.#log.debug(1, 'answered a request 429: answers the tunnel cannot take hold --max-stalled-memory', {
      stalled: reservedBytes,
    });
    return Buffer.from(
      rawStatus({
        status: 429,
        retryAfter: 1,
        message: `tower agent of cluster "${this.#opts.name}": answers the tunnel cannot take (their clients stopped reading) hold ${mib(reservedBytes)} MiB there, the agent's limit of ${mib(maxBytes)} MiB (its --max-stalled-memory); retry shortly`,
      }),
    );
  }

  /** Keeps the session until it ends; returns why it ended. */
  #hold(held: Held, creds: Credentials): Promise<string> {
    const { session } = held;
    return new Promise((resolve) => {
      const timers: NodeJS.Timeout[] = [];
      let ended = false;
      const end = (why: string) => {
        if (ended) return;
        ended = true;
        for (const t of timers) clearInterval(t);
        session.close();
        resolve(why);
      };
      session.once('close', () => end('the connection closed'));
      const { keepaliveMs } = this.#opts;
      if (keepaliveMs > 0) {
        timers.push(
          setInterval(() => {
            session.ping(Math.max(keepaliveMs, MIN_PING_TIMEOUT_MS)).catch((err: Error) => end(err.message));
          }, keepaliveMs),
        );
      }
      if (creds.tokenFile) {
        const file = creds.tokenFile;
        const announced = creds.bearerToken;
        timers.push(
          setInterval(() => {
            let now: Buffer;
            try {
              now = readFileSync(file);
            } catch {
              return;
            }
            // a rotated token is announced by reconnecting, which every v1 proxy understands
            if (announced && !now.equals(announced)) end(`the token in ${file} rotated`);
          }, TOKEN_FILE_CHECK_MS),
        );
      }
    });
  }

  /** Waits `ms`, or less when stopped. */
  #sleep(ms: number): Promise<void> {
    return sleep(ms, undefined, { signal: this.#stopping.signal }).then(
      () => undefined,
      () => undefined,
    );
  }

  /** Waits until something changes: a session ended, the replicas changed, stop. */
  #idle(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.#wake = undefined;
        this.#stopping.signal.removeEventListener('abort', done);
        resolve();
      };
      this.#wake = done;
      this.#stopping.signal.addEventListener('abort', done);
    });
  }
}

const contexts = new WeakMap<Credentials, SecureContext>();
/** the member's CA and client certificate, parsed once per set of credentials */
function secureContextOf(c: Credentials): SecureContext {
  let ctx = contexts.get(c);
  if (!ctx) {
    ctx = createSecureContext({ ca: c.caData, cert: c.certData, key: c.keyData });
    contexts.set(c, ctx);
  }
  return ctx;
}

/**
 * What verifies the proxy at `proxyUrl` (normalised: ws:// or wss://) before anything is sent to
 * it — its pinned host key, its TLS certificate — or undefined when nothing does.
 */
export function proxyVerification(
  proxyUrl: string,
  fingerprint: string | undefined,
  ca: string | undefined,
): string | undefined {
  const by = [fingerprint && 'host key', proxyUrl.startsWith('wss:') && (ca ? '--proxy-ca' : 'system roots')].filter(
    Boolean,
  );
  return by.length ? by.join(' and ') : undefined;
}

/**
 * After dialing a replica already held: about a second (jittered over [50%, 100%]) for the first
 * DUPLICATES_AT_STEADY_PACE in a row, then ×1.5 up to the retry cap. A Service picks replicas at
 * random, so reaching the one missing of N takes N dials on average but ~17 for the last of 1 000
 * agents (of 3); each costs a WebSocket upgrade, no SSH. A replica the address never leads to (dead,
 * its Lease not yet expired) ends up costing one upgrade per cap.
 */
export function duplicateDelay(duplicates: number, capMs: number): number {
  const over = Math.max(0, duplicates - DUPLICATES_AT_STEADY_PACE);
  const step = Math.min(capMs, DUPLICATE_STEP_MS * 1.5 ** Math.min(over, 30));
  return step / 2 + Math.random() * (step / 2);
}

/** Exponential from 1 s, capped, with jitter in [50%, 100%] of the step. */
export function backoffDelay(failures: number, capMs: number): number {
  const step = Math.min(capMs, BACKOFF_BASE_MS * 2 ** Math.min(failures - 1, 30));
  return step / 2 + Math.random() * (step / 2);
}

/** `--proxy-server` as the Go agent reads it: http→ws, https→wss, a default port per scheme. */
export function normalizeProxyServer(value: string): string {
  let url: URL;
  try {
    url = new URL(value.includes('://') ? value : `http://${value}`);
  } catch {
    throw new TowerError(
      'ECONFIG',
      `invalid --proxy-server ${JSON.stringify(value)}: want a URL such as http://proxy.example:8080`,
    );
  }
  const scheme = { 'http:': 'ws:', 'https:': 'wss:', 'ws:': 'ws:', 'wss:': 'wss:' }[url.protocol];
  if (!scheme)
    throw new TowerError(
      'ECONFIG',
      `invalid --proxy-server ${JSON.stringify(value)}: the scheme must be http, https, ws or wss`,
    );
  const port = url.port || (scheme === 'wss:' ? '443' : '80');
  const path = url.pathname === '/' ? '' : url.pathname;
  return `${scheme}//${url.hostname}:${port}${path}${url.search}`;
}
