/**
 * What the streams whose reader stopped hold in one process, against a cap. Such a stream (a
 * client that stopped reading a download, a tunnel that is full) holds at most a known amount, its
 * buffers and its SSH window, which it reserves here while it is stalled. How many streams stall
 * is up to the clients: past the cap, new streams are refused (429) rather than the process growing.
 */
/**
 * a stream that takes again is released only once it has kept taking this long: a reader that
 * stopped drains a little now and then (the kernel's buffers grow), and its reservation must not
 * lapse in between, letting new streams in past the cap
 */
const RELEASE_AFTER_MS = 1_000;

export class StallBudget {
  /** the cap: new streams are refused once the stalled ones reserve this much */
  readonly maxBytes: number;
  /** what one stalled stream holds at most */
  readonly bytesPerStream: number;
  #reserved = 0;

  constructor(maxBytes: number, bytesPerStream: number) {
    this.maxBytes = maxBytes;
    this.bytesPerStream = bytesPerStream;
  }

  /** bytes reserved by the streams stalled now */
  get reservedBytes(): number {
    return this.#reserved;
  }

  /** whether new streams are refused now */
  get exhausted(): boolean {
    return this.#reserved >= this.maxBytes;
  }

  /**
   * whether half the cap is reserved: new streams should then be let hold less, so that a burst of
   * them, all admitted before the first stalls, cannot overshoot the cap by their full size
   */
  get pressed(): boolean {
    return this.#reserved >= this.maxBytes / 2;
  }

  /** One stream's account: hold() when its reader stops taking, release() when it takes again, end() when it closes. */
  stream(): Stall {
    let held = false;
    let ended = false;
    let releasing: NodeJS.Timeout | undefined;
    const releaseNow = () => {
      clearTimeout(releasing);
      releasing = undefined;
      if (!held) return;
      held = false;
      this.#reserved -= this.bytesPerStream;
    };
    return {
      hold: () => {
        clearTimeout(releasing);
        releasing = undefined;
        if (held || ended) return;
        held = true;
        this.#reserved += this.bytesPerStream;
      },
      release: () => {
        if (!held || releasing) return;
        releasing = setTimeout(releaseNow, RELEASE_AFTER_MS);
        releasing.unref();
      },
      end: () => {
        ended = true;
        releaseNow();
      },
    };
  }
}

export interface Stall {
  /** the reader stopped taking: reserves, once (nothing after end()) */
  hold(): void;
  /** it takes again: released once it has kept taking for a second */
  release(): void;
  /** the stream is over: releases, and never holds again */
  end(): void;
}
