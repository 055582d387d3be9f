import { Transform, type TransformCallback } from 'node:stream';

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
 * upgrade everything does.
 */
export class AuthorizationInjector extends Transform {
  #line: Buffer;
  #state: State = 'head';
  /** bytes of a head or line that arrived so far */
  #partial: Buffer | undefined;
  /** body bytes left in this request (length) or chunk (data and its CRLF) */
  #remaining = 0;

  /** `authorization`: the header value, e.g. "Bearer <token>" */
  constructor(authorization: string) {
    super();
    this.#line = Buffer.from(`Authorization: ${authorization}\r\n`, 'latin1');
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.#consume(chunk);
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  #consume(input: Buffer): void {
    let buf = input;
    while (buf.length > 0) {
      switch (this.#state) {
        case 'tunnel':
          this.push(buf);
          return;
        case 'length':
        case 'chunk-data': {
          const n = Math.min(this.#remaining, buf.length);
          this.push(buf.subarray(0, n));
          buf = buf.subarray(n);
          this.#remaining -= n;
          if (this.#remaining === 0) this.#state = this.#state === 'length' ? 'head' : 'chunk-size';
          break;
        }
        case 'head': {
          const joined = this.#partial ? Buffer.concat([this.#partial, buf]) : buf;
          const end = joined.indexOf(HEAD_END);
          if (end < 0) {
            if (joined.length > MAX_HEAD_BYTES) throw new Error(`a request head exceeds ${MAX_HEAD_BYTES} bytes`);
            this.#partial = Buffer.from(joined);
            return;
          }
          this.#partial = undefined;
          this.#head(joined.subarray(0, end + 2).toString('latin1'));
          buf = joined.subarray(end + 4);
          break;
        }
        case 'chunk-size':
        case 'trailers': {
          const joined = this.#partial ? Buffer.concat([this.#partial, buf]) : buf;
          const end = joined.indexOf(CRLF);
          if (end < 0) {
            if (joined.length > MAX_LINE_BYTES) throw new Error(`a chunk line exceeds ${MAX_LINE_BYTES} bytes`);
            this.#partial = Buffer.from(joined);
            return;
          }
          this.#partial = undefined;
          this.push(joined.subarray(0, end + 2));
          if (this.#state === 'chunk-size') {
            const size = parseInt(joined.subarray(0, end).toString('latin1').split(';')[0]!.trim(), 16);
            if (!Number.isSafeInteger(size) || size < 0) throw new Error('a malformed chunk size');
            if (size === 0) this.#state = 'trailers';
            else { this.#state = 'chunk-data'; this.#remaining = size + 2; }
          } else if (end === 0) {
            this.#state = 'head';
          }
          buf = joined.subarray(end + 2);
          break;
        }
      }
    }
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
    this.push(Buffer.concat([Buffer.from(out, 'latin1'), this.#line, CRLF]));
    if (upgrade) this.#state = 'tunnel';
    else if (chunked) this.#state = 'chunk-size';
    else if (length > 0) { this.#state = 'length'; this.#remaining = length; }
    else this.#state = 'head';
  }
}
