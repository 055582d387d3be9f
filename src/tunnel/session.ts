import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';

/** why a session ended when nothing more precise was given: its connection closed */
export const CONNECTION_CLOSED = 'the connection closed';

/** The SSH end a session stands on: the agent's client, or one agent's connection on the proxy. */
export interface SshEnd {
  end(): unknown;
  on(event: 'close', listener: () => void): unknown;
}

/**
 * What both ends' sessions share: one SSH connection over one stream (a WebSocket), which ends
 * once, whichever comes first: the peer hangs up, the stream closes, or close() here. The end is
 * told as a 'close' event and as `ended`, with why; timers started with every() belong to the
 * session and stop with it.
 */
export class TunnelSession extends EventEmitter {
  /** resolves with why the session ended, once it has */
  readonly ended: Promise<string>;
  #ssh: SshEnd;
  #stream: Duplex;
  #closed = false;
  #why: string | undefined;
  #timers: NodeJS.Timeout[] = [];
  #resolveEnded!: (why: string) => void;

  constructor(ssh: SshEnd, stream: Duplex) {
    super();
    this.#ssh = ssh;
    this.#stream = stream;
    this.ended = new Promise((resolve) => {
      this.#resolveEnded = resolve;
    });
    ssh.on('close', () => this.#onClose());
    stream.once('close', () => this.#onClose());
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** bytes to and from the peer so far, when the stream counts them (WebSocket) */
  get bytes(): { read: number; written: number } {
    return (this.#stream as Duplex & { bytes?: { read: number; written: number } }).bytes ?? { read: 0, written: 0 };
  }

  /** Ends the SSH connection and its stream, once; `why` is what `ended` resolves with. */
  close(why: string = CONNECTION_CLOSED): void {
    if (this.#closed) return;
    this.#why = why;
    this.#ssh.end();
    this.#stream.destroy();
    this.#onClose();
  }

  /** Calls `tick` every `intervalMs` until the session ends. */
  every(intervalMs: number, tick: () => void): void {
    if (this.#closed) return;
    this.#timers.push(setInterval(tick, intervalMs));
  }

  /**
   * Sends `ping` every `intervalMs` (0: never) until the session ends. A ping that fails (the peer
   * did not answer in time: it is dead, or the way to it is) ends the session, with its message as why.
   */
  keepalive(intervalMs: number, ping: () => Promise<void>): void {
    if (intervalMs <= 0) return;
    this.every(intervalMs, () => {
      ping().catch((err: Error) => this.close(err.message));
    });
  }

  #onClose(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    this.#resolveEnded(this.#why ?? CONNECTION_CLOSED);
    this.emit('close');
  }
}
