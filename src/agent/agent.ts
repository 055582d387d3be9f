import { setTimeout as sleep } from 'node:timers/promises';
import { ConfigRejectedError, TowerError } from '../errors.ts';
import type { Logger } from '../observe/log.ts';
import { MAX_REPLICAS, type ReplicaView } from '../tunnel/protocol.ts';
import { ChannelCarrier } from './carrier.ts';
import { ExecRecorder, type RecordingOptions, type RecordingStats } from './recording.ts';
import type { Credentials } from './credentials.ts';
import type { PolicyHolder, PolicyStats } from './policy-source.ts';
import { ProxySession } from './session.ts';

const BACKOFF_BASE_MS = 1000;
/** a lost session is retried after a random delay below this, so that agents don't return in lockstep */
const RECONNECT_SPREAD_MS = 1000;
/** after a new session, the next one (for another replica) is dialed within this, at random */
const NEXT_SESSION_SPREAD_MS = 3_000;
/** dialing the Service again after reaching a replica already held */
const DUPLICATE_STEP_MS = 1_000;
const DUPLICATES_AT_STEADY_PACE = 30;

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
  /** the member policy judged on every request (--policy, --policy-configmap), started by the caller */
  policy?: PolicyHolder;
  /** exec and attach sessions on record (--record-exec) */
  recording?: RecordingOptions;
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
  /** the member policy's counts, with one */
  policy: PolicyStats | undefined;
  /** with --record-exec: the sessions recorded, or not, and what the recordings hold */
  recordings: RecordingStats | undefined;
}

/**
 * The agent's loop: holds a session (ProxySession) to every proxy replica (one with a proxy that
 * names no replicas), dialing its one --proxy-server address (a Service in front of the replicas)
 * until it holds one to each replica the proxy says lives; retries with a jittered backoff, and
 * gives up after --max-retry. The channels of every session are carried by one ChannelCarrier.
 */
export class TowerAgent {
  #opts: AgentOptions;
  #log: Logger;
  #stopped = false;
  #held = new Set<ProxySession>();
  /** the live replicas as the proxy last said (undefined: it never said, i.e. one session will do) */
  #replicas: string[] | undefined;
  /** ends the idle wait when something changes */
  #wake: (() => void) | undefined;
  #stopping = new AbortController();
  #carrier: ChannelCarrier;
  #recorder: ExecRecorder | undefined;
  #stats = { reconnects: 0, failures: 0, bytesRead: 0, bytesWritten: 0 };

  constructor(opts: AgentOptions) {
    // the command checks this with a friendlier message; here it holds for every caller
    if (!proxyVerification(opts.proxyUrl, opts.proxyFingerprint, opts.proxyCa) && !opts.insecureSkipProxyVerification) {
      throw new TowerError(
        'EUNVERIFIED',
        `refusing to connect to ${opts.proxyUrl}: nothing verifies that it is the proxy ` +
          `(give a fingerprint, or a wss:// address)`,
      );
    }
    this.#opts = opts;
    this.#log = opts.log;
    this.#recorder = opts.recording ? new ExecRecorder(opts.recording, opts.name, opts.log) : undefined;
    this.#carrier = new ChannelCarrier({ ...opts, recorder: this.#recorder });
  }

  /** channels open now */
  get channels(): number {
    return this.#carrier.channels;
  }

  /** counters so far, the live connections' bytes included */
  get stats(): AgentStats {
    let read = this.#stats.bytesRead;
    let written = this.#stats.bytesWritten;
    for (const h of this.#held) {
      const b = h.bytes;
      read += b.read;
      written += b.written;
    }
    return {
      reconnects: this.#stats.reconnects,
      failures: this.#stats.failures,
      bytesRead: read,
      bytesWritten: written,
      violations: this.#carrier.violations,
      stalledRefusals: this.#carrier.stalledRefusals,
      connected: this.#held.size > 0,
      sessions: this.#held.size,
      replicas: this.#replicas?.length ?? 1,
      stalledBytes: this.#carrier.stalledBytes,
      policy: this.#opts.policy?.stats,
      recordings: this.#recorder?.stats,
    };
  }

  stop(): void {
    this.#stopped = true;
    for (const h of this.#held) h.close();
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
      let session: ProxySession | 'duplicate';
      try {
        creds = this.#opts.credentials();
        session = await ProxySession.open(this.#opts, {
          creds,
          held: () => [...this.#held].map((h) => h.server).filter((id): id is string => id !== undefined),
          carrier: this.#carrier,
          onView: (from, view) => this.#onView(from, view),
        });
      } catch (err) {
        // refused while another replica holds this agent's session: replicas that disagree for a moment
        // (a token rotating, a Cluster not yet seen), not a wrong token; retried with backoff
        if (err instanceof ConfigRejectedError && err.unauthorized && this.#held.size === 0) {
          throw new TowerError(
            'EUNAUTHORIZED',
            `the proxy refused agent "${this.#opts.name}": ${err.message} (check --name and --token; ` +
              `the proxy's host prints them with: tower token ${this.#opts.name})`,
          );
        }
        failures++;
        this.#stats.failures++;
        lastError = err as Error;
        continue;
      }
      failures = 0;
      if (session === 'duplicate') {
        duplicates++;
        continue;
      }
      duplicates = 0;
      connectedJustNow = true;
      this.#held.add(session);
      this.#connected(session, creds);
    }
  }

  /** Says so, and follows the new session until it ends: then it is dialed again. */
  #connected(session: ProxySession, creds: Credentials): void {
    // loudly, at every connection: each one hands this cluster's requests to whoever answered
    if (!proxyVerification(this.#opts.proxyUrl, this.#opts.proxyFingerprint, this.#opts.proxyCa)) {
      this.#log.warn(
        'INSECURE: the proxy is not verified (--insecure-skip-proxy-verification): whoever answers at its ' +
          "address gets this cluster's requests; pin its host key with --proxy-fingerprint",
        { fingerprint: session.tunnel.hostKeyFingerprint },
      );
    }
    this.#log.info('connected to proxy', {
      proxy: this.#opts.proxyUrl,
      cluster: this.#opts.name,
      server: session.server,
      sessions: this.#held.size,
      upstream: session.upstreams[0],
      credentials: creds.origin,
    });
    void session.ended.then((why) => {
      this.#held.delete(session);
      const b = session.bytes;
      this.#stats.bytesRead += b.read;
      this.#stats.bytesWritten += b.written;
      if (this.#stopped) return;
      this.#stats.reconnects++;
      const expected =
        session.draining ||
        (session.server !== undefined && this.#replicas !== undefined && !this.#replicas.includes(session.server));
      // a replica that drained or left ends its sessions on purpose: said, not warned
      if (expected)
        this.#log.info('disconnected from proxy; reconnecting', {
          why: `${why} (the replica ${session.draining ? 'drained' : 'left'})`,
          server: session.server,
        });
      else this.#log.warn('disconnected from proxy; reconnecting', { why, server: session.server });
      // a lost session is redialed after a random delay, so that agents don't return in lockstep
      setTimeout(() => this.#wake?.(), Math.random() * RECONNECT_SPREAD_MS);
    });
  }

  /** What a replica says on its control channel: the live set (which replicas to hold). */
  #onView(from: ProxySession, view: ReplicaView): void {
    const before = this.#replicas?.join(',');
    this.#replicas = view.servers.slice(0, MAX_REPLICAS);
    if (before !== this.#replicas.join(','))
      this.#log.info('proxy replicas', { replicas: this.#replicas.join(','), from: view.server });
    // a replica that left (its Lease gone) is not held on to
    for (const h of this.#held) {
      if (h !== from && h.server !== undefined && !view.servers.includes(h.server) && !h.draining) {
        this.#log.info('closing the session to a replica that is no longer live', {
          server: h.server,
          from: view.server,
        });
        h.close();
      }
    }
    this.#wake?.();
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
