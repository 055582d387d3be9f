/** a request head larger than this is not HTTP the proxy would send: the channel is closed */
export const MAX_HEAD_BYTES = 64 * 1024;
const MAX_LINE_BYTES = 8 * 1024;
const CRLF = Buffer.from('\r\n');
const HEAD_END = Buffer.from('\r\n\r\n');

type State = 'head' | 'length' | 'chunk-size' | 'chunk-data' | 'trailers' | 'tunnel';

/**
 * Adds the member's credentials to the HTTP/1.1 requests the proxy sends through a channel, so
 * that they never leave the member: each request head loses any Authorization and gains the
 * agent's own. Bodies (by Content-Length or chunked) pass through untouched and uncopied; after an
 * upgrade everything does. Not a stream: the bytes go to `push` in the caller's turn, no extra hop.
 */
export class AuthorizationInjector {
  #line: Buffer;
  #push: (chunk: Buffer) => void;
  #state: State = 'head';
  /** bytes of a head or line that arrived so far */
  #partial: Buffer | undefined;
  /** body bytes left in this request (length) or chunk (data and its CRLF) */
  #remaining = 0;

  /** `authorization`: the header value, e.g. "Bearer <token>"; `push` receives the bytes to send on */
  constructor(authorization: string, push: (chunk: Buffer) => void) {
    this.#line = Buffer.from(`Authorization: ${authorization}\r\n`, 'latin1');
    this.#push = push;
  }

  /** Takes the next bytes from the proxy; throws when they are not HTTP/1.1 requests. */
  feed(chunk: Buffer): void {
    this.#consume(chunk);
  }

  #consume(input: Buffer): void {
    let buf = input;
    while (buf.length > 0) {
      switch (this.#state) {
        case 'tunnel':
          this.#push(buf);
          return;
        case 'length':
        case 'chunk-data': {
          const n = Math.min(this.#remaining, buf.length);
          this.#push(buf.subarray(0, n));
          buf = buf.subarray(n);
          this.#remaining -= n;
          if (this.#remaining === 0) this.#state = this.#state === 'length' ? 'head' : 'chunk-size';
          break;
        }
        case 'head': {
          const found = this.#upTo(buf, HEAD_END, MAX_HEAD_BYTES, 'a request head');
          if (!found) return;
          this.#head(found.text.subarray(0, found.text.length - 2).toString('latin1'));
          buf = found.rest;
          break;
        }
        case 'chunk-size':
        case 'trailers': {
          const found = this.#upTo(buf, CRLF, MAX_LINE_BYTES, 'a chunk line');
          if (!found) return;
          this.#push(found.text);
          const line = found.text.subarray(0, found.text.length - 2);
          if (this.#state === 'chunk-size') {
            const size = parseInt(line.toString('latin1').split(';')[0]!.trim(), 16);
            if (!Number.isSafeInteger(size) || size < 0) throw new Error('a malformed chunk size');
            if (size === 0) this.#state = 'trailers';
            else { this.#state = 'chunk-data'; this.#remaining = size + 2; }
          } else if (line.length === 0) {
            this.#state = 'head';
          }
          buf = found.rest;
          break;
        }
      }
    }
  }

  /**
   * The bytes up to and including `end`, with what arrived before (kept across calls), and the
   * rest; undefined while `end` has not arrived (at most `max` bytes are kept waiting for it).
   */
  #upTo(buf: Buffer, end: Buffer, max: number, what: string): { text: Buffer; rest: Buffer } | undefined {
    const joined = this.#partial ? Buffer.concat([this.#partial, buf]) : buf;
    const at = joined.indexOf(end);
    if (at < 0) {
      if (joined.length > max) throw new Error(`${what} exceeds ${max} bytes`);
      this.#partial = Buffer.from(joined);
      return undefined;
    }
    this.#partial = undefined;
    return { text: joined.subarray(0, at + end.length), rest: joined.subarray(at + end.length) };
  }

  /** `head`: request line and header lines, each ending in CRLF, without the blank line */
  #head(head: string): void {
    const lines = head.split('\r\n');
    lines.pop();
    // a stray CRLF between messages is allowed before a request line
    while (lines.length && lines[0] === '') lines.shift();
    if (lines.length === 0) return;
    let out = lines[0] + '\r\n';
    let chunked = false;
    let length = 0;
    let upgrade = /^CONNECT /i.test(lines[0]!);
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const colon = line.indexOf(':');
      const name = (colon < 0 ? line : line.slice(0, colon)).trim().toLowerCase();
      const value = colon < 0 ? '' : line.slice(colon + 1).trim();
      if (name === 'authorization') continue;
      if (name === 'transfer-encoding' && /chunked/i.test(value)) chunked = true;
      else if (name === 'content-length') {
        length = Number(value);
        if (!Number.isSafeInteger(length) || length < 0) throw new Error('a malformed Content-Length');
      } else if (name === 'upgrade') upgrade = true;
      out += line + '\r\n';
    }
    this.#push(Buffer.concat([Buffer.from(out, 'latin1'), this.#line, CRLF]));
    if (upgrade) this.#state = 'tunnel';
    else if (chunked) this.#state = 'chunk-size';
    else if (length > 0) { this.#state = 'length'; this.#remaining = length; }
    else this.#state = 'head';
  }
}
