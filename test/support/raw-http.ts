// Raw HTTP/1.1 on a socket, for tests that must see every byte: a reader of the answers on a
// connection (each framed as HTTP/1.1 says for its request's method), and chunked decoding.
import type { Duplex } from 'node:stream';

const CRLF = '\r\n';

export interface Answer {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  head: string;
}
export type Outcome =
  | { kind: 'answer'; answer: Answer }
  /** the connection ended before an answer began */
  | { kind: 'closed' }
  | { kind: 'timeout' }
  /** bytes that are not an HTTP answer, or one cut off */
  | { kind: 'garbage'; bytes: string }
  /** never sent: the connection had ended before */
  | { kind: 'unsent' };

/**
 * Decodes a chunked body at the start of `buf`: its data and what follows the last chunk (and
 * trailers); undefined while incomplete; throws when it is not chunked encoding.
 */
export function decodeChunked(buf: Buffer): { body: Buffer; rest: Buffer } | undefined {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = buf.indexOf(CRLF, at);
    if (eol < 0) return undefined;
    const size = parseInt(buf.subarray(at, eol).toString('latin1').split(';')[0]!.trim(), 16);
    if (!Number.isSafeInteger(size) || size < 0) throw new Error('not chunked encoding');
    at = eol + 2;
    if (size === 0) break;
    if (buf.length < at + size + 2) return undefined;
    parts.push(buf.subarray(at, at + size));
    at += size + 2;
  }
  // trailers, up to an empty line
  for (;;) {
    const eol = buf.indexOf(CRLF, at);
    if (eol < 0) return undefined;
    const empty = eol === at;
    at = eol + 2;
    if (empty) return { body: Buffer.concat(parts), rest: buf.subarray(at) };
  }
}

const HEAD_END = '\r\n\r\n';
const HTTP_PREFIX = 'HTTP/1.';
const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/;

/** The answers on one raw connection, in order, each framed as HTTP/1.1 says for its request's method. */
export class ResponseReader {
  #buf: Buffer = Buffer.alloc(0);
  #ended = false;
  #wake: (() => void) | undefined;

  constructor(socket: Duplex) {
    socket.on('data', (d: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, d]);
      this.#wake?.();
    });
    const end = () => {
      this.#ended = true;
      this.#wake?.();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end);
  }

  get ended(): boolean {
    return this.#ended;
  }
  /** bytes after the last answer read */
  get leftover(): Buffer {
    return this.#buf;
  }

  /** The next final answer (1xx interim answers skipped), for a request with `method`. */
  async next(method: string, timeoutMs: number): Promise<Outcome> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const parsed = this.#parse(method);
      if (parsed === 'interim') continue;
      if (parsed) return parsed;
      if (this.#ended) {
        return this.#buf.length === 0
          ? { kind: 'closed' }
          : { kind: 'garbage', bytes: `(cut off) ${this.#buf.toString('latin1')}` };
      }
      const left = deadline - Date.now();
      if (left <= 0) return { kind: 'timeout' };
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }

  /** one answer off the buffer; undefined while incomplete; 'interim' when a 1xx was dropped */
  #parse(method: string): Outcome | 'interim' | undefined {
    const end = this.#buf.indexOf(HEAD_END);
    if (end < 0) {
      const start = this.#buf.subarray(0, HTTP_PREFIX.length).toString('latin1');
      return HTTP_PREFIX.startsWith(start) ? undefined : this.#garbage();
    }
    const head = this.#buf.subarray(0, end).toString('latin1');
    const [statusLine = '', ...lines] = head.split(CRLF);
    const m = STATUS_LINE.exec(statusLine);
    if (!m) return this.#garbage();
    const status = Number(m[1]);
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const colon = line.indexOf(':');
      if (colon <= 0) return this.#garbage();
      const k = line.slice(0, colon).trim().toLowerCase();
      const v = line.slice(colon + 1).trim();
      headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
    }
    const rest = this.#buf.subarray(end + HEAD_END.length);
    if (status >= 100 && status < 200 && status !== 101) {
      this.#buf = rest;
      return 'interim';
    }
    let body: Buffer;
    if (method === 'HEAD' || status === 204 || status === 304 || status === 101) {
      body = Buffer.alloc(0);
      this.#buf = rest;
    } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
      let d: ReturnType<typeof decodeChunked>;
      try {
        d = decodeChunked(rest);
      } catch {
        return this.#garbage();
      }
      if (!d) return undefined;
      body = d.body;
      this.#buf = d.rest;
    } else if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length']);
      if (!Number.isSafeInteger(n) || n < 0) return this.#garbage();
      if (rest.length < n) return undefined;
      body = rest.subarray(0, n);
      this.#buf = rest.subarray(n);
    } else {
      // framed by the end of the connection
      if (!this.#ended) return undefined;
      body = rest;
      this.#buf = Buffer.alloc(0);
    }
    return { kind: 'answer', answer: { status, headers, body: Buffer.from(body), head } };
  }

  #garbage(): Outcome {
    const bytes = this.#buf.toString('latin1');
    this.#buf = Buffer.alloc(0);
    return { kind: 'garbage', bytes };
  }
}

/** Bytes for a message: printable, escaped, cut short. */
export function show(b: Buffer | string, max = 160): string {
  const s = typeof b === 'string' ? b : b.toString('latin1');
  const j = JSON.stringify(s.length > max ? s.slice(0, max) : s);
  return s.length > max ? `${j}…(${s.length} bytes)` : j;
}
