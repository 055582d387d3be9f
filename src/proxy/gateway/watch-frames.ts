/**
 * Where the events of a watch stream end, so that a draining replica can end a watch between two
 * events: JSON watches put one event per line; protobuf ones (`;stream=watch`) frame each event
 * with a 4-byte big-endian length. Anything else ends wherever a chunk ends.
 */
export class WatchFrames {
  #framed: boolean;
  #lines: boolean;
  /** bytes of the current frame's body still to come */
  #need = 0;
  /** bytes of the current frame's length prefix seen so far */
  #prefix = Buffer.alloc(4);
  #prefixBytes = 0;
  #atBoundary = true;

  constructor(contentType: string) {
    this.#framed = /protobuf/i.test(contentType);
    this.#lines = !this.#framed && /json/i.test(contentType);
  }

  /** whether everything fed so far ends with a whole event */
  get atBoundary(): boolean {
    return this.#atBoundary;
  }

  /** Takes in the next chunk; returns the offset just past the first event that ends in it, or -1. */
  feed(chunk: Buffer): number {
    if (chunk.length === 0) return this.#atBoundary ? 0 : -1;
    if (this.#lines) {
      const nl = chunk.indexOf(10);
      this.#atBoundary = chunk[chunk.length - 1] === 10;
      return nl < 0 ? -1 : nl + 1;
    }
    if (!this.#framed) return chunk.length;
    let first = -1;
    let pos = 0;
    while (pos < chunk.length) {
      if (this.#need === 0) {
        const take = Math.min(4 - this.#prefixBytes, chunk.length - pos);
        chunk.copy(this.#prefix, this.#prefixBytes, pos, pos + take);
        this.#prefixBytes += take;
        pos += take;
        if (this.#prefixBytes < 4) break;
        this.#prefixBytes = 0;
        this.#need = this.#prefix.readUInt32BE(0);
        if (this.#need === 0 && first < 0) first = pos;
        continue;
      }
      const take = Math.min(this.#need, chunk.length - pos);
      this.#need -= take;
      pos += take;
      if (this.#need === 0 && first < 0) first = pos;
    }
    this.#atBoundary = this.#need === 0 && this.#prefixBytes === 0;
    return first;
  }
}
