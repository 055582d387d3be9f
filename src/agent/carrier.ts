import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls';
import type { ClientChannel } from 'ssh2';
import { rawStatus } from '../http/status.ts';
import type { Logger } from '../observe/log.ts';
import { hostOf, splitHostPort } from '../tunnel/protocol.ts';
import { CHANNEL_BUFFER_BYTES } from '../tunnel/ssh.ts';
import { StallBudget, type Stall } from '../tunnel/stall-budget.ts';
import type { Credentials } from './credentials.ts';
import { ExchangeViolation, HttpExchange, type ExchangeOptions } from './exchange.ts';
import { SessionRecording, type ExecRecorder } from './recording.ts';

export const UPSTREAM_DIAL_TIMEOUT_MS = 10_000;
/** --max-stalled-memory: beside an idle agent's ~80 MiB, within a 200 MB memory limit */
export const DEFAULT_MAX_STALLED_BYTES = 24 * 2 ** 20;
/**
 * what an answer the tunnel cannot take holds here at most: the channel's buffer, and the member
 * connection's (TLS and socket) before it pauses
 */
const STALLED_ANSWER_BYTES = 3 * CHANNEL_BUFFER_BYTES;

export interface CarrierOptions {
  /** the cluster's name, in the answers the agent makes itself */
  name: string;
  /** channels the proxy may hold open at once; more are refused */
  maxChannels: number;
  /** what answers the tunnel cannot take may hold, in all, before requests are answered 429 here */
  maxStalledBytes?: number;
  /** each upstream dial's time in seconds, and whether it failed (metrics, with --health-port) */
  onDial?: (seconds: number, failed: boolean) => void;
  /** records exec and attach sessions (--record-exec) */
  recorder?: ExecRecorder;
  log: Logger;
}

/** How one channel is carried: what the session that received it decided. */
export interface Carriage {
  /** the member's credentials, when the agent makes the TLS to it (CHANNEL_TYPE_TLS) */
  tls?: Credentials;
  /** when the agent reads the channel's HTTP: the Authorization it adds to each request, if any */
  http?: { authorization: string | undefined };
  /** the member policy's judgment of each request head on an HTTP channel: a refusal to answer instead */
  judge?: ExchangeOptions['judge'];
}

/**
 * Carries the channels the proxy opens, over every session, to the member's apiservers: dials the
 * upstream (with TLS when the agent makes it), pipes both ways with backpressure, reads the HTTP of
 * channels it can see into (an HttpExchange), and holds the limits: --max-channels open at once,
 * and --max-stalled-memory for answers the tunnel cannot take.
 */
export class ChannelCarrier {
  #opts: CarrierOptions;
  #log: Logger;
  #channels = 0;
  #stalled: StallBudget;
  #violations = 0;
  #stalledRefusals = 0;

  constructor(opts: CarrierOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.#stalled = new StallBudget(opts.maxStalledBytes ?? DEFAULT_MAX_STALLED_BYTES, STALLED_ANSWER_BYTES);
  }

  /** channels open now */
  get channels(): number {
    return this.#channels;
  }

  /** channels closed because the proxy or the member broke HTTP/1.1 on them */
  get violations(): number {
    return this.#violations;
  }

  /** requests answered 429 here (or channels refused) because stalled answers held --max-stalled-memory */
  get stalledRefusals(): number {
    return this.#stalledRefusals;
  }

  /** exec and attach sessions are recorded: a channel the agent cannot read must not reach the kube-apiserver */
  get recording(): boolean {
    return this.#opts.recorder !== undefined;
  }

  /** bytes reserved now by answers the tunnel cannot take */
  get stalledBytes(): number {
    return this.#stalled.reservedBytes;
  }

  /**
   * A channel the proxy opened to `hostPort` (an upstream the session announced): refused past
   * --max-channels; while stalled answers hold --max-stalled-memory, answered 429 here (HTTP) or
   * refused; else carried to the member.
   */
  offer(hostPort: string, carriage: Carriage, accept: () => ClientChannel, reject: () => void): void {
    if (this.#channels >= this.#opts.maxChannels) {
      this.#log.warn('refused a channel: the proxy holds as many open as --max-channels allows', {
        open: this.#channels,
      });
      reject();
      return;
    }
    if (this.#stalled.exhausted) {
      // the member is not dialed: an HTTP channel gets its 429 here, one the agent cannot read into is refused
      if (carriage.http) {
        this.#answerStalled(accept);
        return;
      }
      this.#stalledRefusals++;
      this.#log.debug(1, 'refused a channel: answers the tunnel cannot take hold --max-stalled-memory', {
        stalled: this.#stalled.reservedBytes,
      });
      reject();
      return;
    }
    this.#pipe(hostPort, carriage, accept, reject);
  }

  /**
   * Dials the upstream first (with TLS when the carriage holds its credentials), so that a dead
   * upstream refuses the channel instead of half-opening it.
   */
  #pipe(hostPort: string, { tls, http, judge }: Carriage, accept: () => ClientChannel, reject: () => void): void {
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
      if (http) this.#pipeExchange(ch, upstream, http.authorization, hostPort, stall, judge);
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
    judge: Carriage['judge'],
  ): void {
    const recorder = this.#opts.recorder;
    let recording: SessionRecording | undefined;
    const exchange = new HttpExchange({
      authorization,
      judge,
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
      tap: recorder
        ? (request) => {
            const tap = recorder.begin(request, () => {
              ch.destroy();
              upstream.destroy();
            });
            if (tap instanceof SessionRecording) recording = tap;
            return tap;
          }
        : undefined,
    });
    // the recording ends with its channel, however that ends
    ch.once('close', () => recording?.end());
    upstream.once('close', () => recording?.end());
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
      this.#violations++;
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

  /** The 429 (a Kubernetes Status) the agent answers itself while stalled answers hold --max-stalled-memory. */
  #stalledAnswer(): Buffer {
    this.#stalledRefusals++;
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    const { reservedBytes, maxBytes } = this.#stalled;
    this.#log.debug(1, 'answered a request 429: answers the tunnel cannot take hold --max-stalled-memory', {
      stalled: reservedBytes,
    });
    return Buffer.from(
      rawStatus({
        status: 429,
        retryAfter: 1,
        message:
          `tower agent of cluster "${this.#opts.name}": answers the tunnel cannot take (their clients stopped ` +
          `reading) hold ${mib(reservedBytes)} MiB there, the agent's limit of ${mib(maxBytes)} MiB ` +
          `(its --max-stalled-memory); retry shortly`,
      }),
    );
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
