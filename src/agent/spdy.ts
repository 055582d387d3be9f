import { constants, createInflate, type Inflate } from 'node:zlib';
import {
  FROM_CLIENT,
  FROM_SERVER,
  UnreadableStream,
  type ExecStream,
  type ExecStreamEvents,
  type ExecStreamReader,
} from './exec-streams.ts';

/**
 * SPDY/3.1 as kubectl's remotecommand uses it (`Upgrade: SPDY/3.1`): the client opens one stream per purpose with
 * SYN_STREAM, naming it in the header `streamtype` (error, stdin, stdout, stderr, resize); DATA frames carry each
 * stream's bytes. Header blocks are zlib-compressed with the SPDY/3 dictionary, in one compression context per
 * direction for the whole connection, so every block the client sends is inflated, in order. The server's blocks
 * (SYN_REPLY) name nothing needed here and are skipped: its context is its own. DATA payloads stream through; only
 * a frame head (8 bytes) and a header-carrying control frame (at most MAX_HEADER_FRAME_BYTES) are held.
 */

const SPDY_VERSION = 3;
const TYPE_SYN_STREAM = 1;
const TYPE_SYN_REPLY = 2;
const TYPE_HEADERS = 8;
/** a header block of kubectl's is ~100 bytes: one far larger is not a session read here */
export const MAX_HEADER_FRAME_BYTES = 64 * 1024;
const MAX_INFLATED_BYTES = 64 * 1024;
const MAX_HEADER_PAIRS = 256;
/** DATA on streams not yet named, held while their SYN_STREAM's header block inflates (asynchronously) */
const MAX_WAITING_BYTES = 256 * 1024;

/** The SPDY/3 header dictionary (draft 3, §2.6.10.1): length-prefixed names, then a run of common values. */
export const SPDY_DICTIONARY: Buffer = (() => {
  const words = [
    'options', 'head', 'post', 'put', 'delete', 'trace', 'accept', 'accept-charset', 'accept-encoding',
    'accept-language', 'accept-ranges', 'age', 'allow', 'authorization', 'cache-control', 'connection',
    'content-base', 'content-encoding', 'content-language', 'content-length', 'content-location', 'content-md5',
    'content-range', 'content-type', 'date', 'etag', 'expect', 'expires', 'from', 'host', 'if-match',
    'if-modified-since', 'if-none-match', 'if-range', 'if-unmodified-since', 'last-modified', 'location',
    'max-forwards', 'pragma', 'proxy-authenticate', 'proxy-authorization', 'range', 'referer', 'retry-after',
    'server', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'user-agent', 'vary', 'via', 'warning',
    'www-authenticate', 'method', 'get', 'status', '200 OK', 'version', 'HTTP/1.1', 'url', 'public', 'set-cookie',
    'keep-alive', 'origin',
  ]; // prettier-ignore
  const tail =
    '100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505' +
    '203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized' +
    '403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable' +
    'Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT' +
    'chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,' +
    'text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.';
  const parts: Buffer[] = [];
  for (const w of words) {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(w.length);
    parts.push(length, Buffer.from(w, 'latin1'));
  }
  parts.push(Buffer.from(tail, 'latin1'));
  return Buffer.concat(parts);
})();

export interface SpdyFrameEvents {
  /** a header block's frame (SYN_STREAM, SYN_REPLY, HEADERS): its stream and the block, still compressed */
  headers?(type: number, streamId: number, block: Buffer): void;
  data(streamId: number, bytes: Buffer): void;
}

/** One direction's SPDY/3 frames, as they stream. */
export class SpdyFrameReader {
  readonly #events: SpdyFrameEvents;
  #head = Buffer.alloc(8);
  #headBytes = 0;
  /** body bytes left in the current frame; -1 while reading a frame head */
  #remaining = -1;
  /** what the current frame's body is for */
  #body: { kind: 'data'; streamId: number } | { kind: 'skip' } | { kind: 'headers'; type: number; parts: Buffer[] } = {
    kind: 'skip',
  };
  #length = 0;

  constructor(events: SpdyFrameEvents) {
    this.#events = events;
  }

  feed(input: Buffer): void {
    let at = 0;
    while (at < input.length) {
      if (this.#remaining < 0) {
        while (at < input.length && this.#headBytes < 8) this.#head[this.#headBytes++] = input[at++]!;
        if (this.#headBytes === 8) this.#begin();
        continue;
      }
      const n = Math.min(this.#remaining, input.length - at);
      const part = input.subarray(at, at + n);
      at += n;
      this.#remaining -= n;
      const body = this.#body;
      if (body.kind === 'data') this.#events.data(body.streamId, part);
      else if (body.kind === 'headers') body.parts.push(part);
      if (this.#remaining === 0) this.#ended();
    }
  }

  #begin(): void {
    const h = this.#head;
    this.#headBytes = 0;
    const length = h.readUInt32BE(4) & 0xffffff;
    this.#length = length;
    if (h[0]! & 0x80) {
      const version = h.readUInt16BE(0) & 0x7fff;
      if (version !== SPDY_VERSION) throw new UnreadableStream(`a SPDY control frame of version ${version}`);
      const type = h.readUInt16BE(2);
      const carriesHeaders = type === TYPE_SYN_STREAM || type === TYPE_SYN_REPLY || type === TYPE_HEADERS;
      if (carriesHeaders && this.#events.headers) {
        if (length > MAX_HEADER_FRAME_BYTES)
          throw new UnreadableStream(`a SPDY header frame of ${length} bytes (over ${MAX_HEADER_FRAME_BYTES})`);
        this.#body = { kind: 'headers', type, parts: [] };
      } else {
        this.#body = { kind: 'skip' };
      }
    } else {
      this.#body = { kind: 'data', streamId: h.readUInt32BE(0) & 0x7fffffff };
    }
    this.#remaining = length;
    if (length === 0) this.#ended();
  }

  #ended(): void {
    this.#remaining = -1;
    const body = this.#body;
    this.#body = { kind: 'skip' };
    if (body.kind !== 'headers') return;
    // SYN_STREAM: stream, associated stream, priority and slot before the block; the others: the stream
    const frame = Buffer.concat(body.parts, this.#length);
    const before = body.type === TYPE_SYN_STREAM ? 10 : 4;
    if (frame.length < before) throw new UnreadableStream('a SPDY header frame shorter than its fields');
    this.#events.headers!(body.type, frame.readUInt32BE(0) & 0x7fffffff, frame.subarray(before));
  }
}

/**
 * One direction's header blocks, inflated in one context, in order: each block as name → value (lower-case
 * names, as SPDY/3 requires; several values of one name stay joined by NUL). Inflating is asynchronous;
 * `pending` counts the blocks not yet out.
 */
export class SpdyHeaderInflater {
  readonly #inflate: Inflate;
  readonly #waiting: { type: number; streamId: number }[] = [];
  #out: Buffer = Buffer.alloc(0);
  #failed = false;

  constructor(
    onBlock: (type: number, streamId: number, headers: Map<string, string>) => void,
    onError: (err: Error) => void,
  ) {
    this.#inflate = createInflate({
      dictionary: SPDY_DICTIONARY,
      // each block ends in a sync flush: all of it comes out before the next arrives
      flush: constants.Z_SYNC_FLUSH,
      finishFlush: constants.Z_SYNC_FLUSH,
    });
    const fail = (err: Error) => {
      if (this.#failed) return;
      this.#failed = true;
      this.#inflate.destroy();
      onError(err);
    };
    this.#inflate.on('error', (err) => fail(new UnreadableStream(`a SPDY header block: ${err.message}`)));
    this.#inflate.on('data', (d: Buffer) => {
      if (this.#failed) return;
      this.#out = this.#out.length ? Buffer.concat([this.#out, d]) : d;
      try {
        for (let block = parseBlock(this.#out); block; block = parseBlock(this.#out)) {
          this.#out = this.#out.subarray(block.used);
          const frame = this.#waiting.shift();
          if (!frame) throw new UnreadableStream('a SPDY header block no frame carried');
          onBlock(frame.type, frame.streamId, block.headers);
        }
        if (this.#out.length > MAX_INFLATED_BYTES)
          throw new UnreadableStream(`a SPDY header block over ${MAX_INFLATED_BYTES} bytes inflated`);
      } catch (err) {
        fail(err as Error);
      }
    });
  }

  get pending(): number {
    return this.#waiting.length;
  }

  push(type: number, streamId: number, block: Buffer): void {
    if (this.#failed) return;
    this.#waiting.push({ type, streamId });
    // a copy: the bytes relayed are not held by zlib's queue
    this.#inflate.write(Buffer.from(block));
  }

  close(): void {
    this.#failed = true;
    this.#inflate.destroy();
  }
}

/** A whole name/value block at the start of `buf`, or undefined while it is incomplete. */
function parseBlock(buf: Buffer): { headers: Map<string, string>; used: number } | undefined {
  if (buf.length < 4) return undefined;
  const pairs = buf.readUInt32BE(0);
  if (pairs > MAX_HEADER_PAIRS) throw new UnreadableStream(`a SPDY header block of ${pairs} pairs`);
  const headers = new Map<string, string>();
  let at = 4;
  const string = (): string | undefined => {
    if (buf.length < at + 4) return undefined;
    const length = buf.readUInt32BE(at);
    if (length > MAX_INFLATED_BYTES) throw new UnreadableStream('a SPDY header longer than a block may be');
    if (buf.length < at + 4 + length) return undefined;
    const s = buf.toString('latin1', at + 4, at + 4 + length);
    at += 4 + length;
    return s;
  };
  for (let i = 0; i < pairs; i++) {
    const name = string();
    if (name === undefined) return undefined;
    const value = string();
    if (value === undefined) return undefined;
    // spdystream splits a value at NUL (and a reader takes the first part); a name twice or in capitals is read
    // one way or another: none is read here as anything
    if (headers.has(name) || name !== name.toLowerCase() || value.includes('\0'))
      throw new UnreadableStream(`a SPDY header ${JSON.stringify(name.slice(0, 32))} that is read more than one way`);
    headers.set(name, value);
  }
  return { headers, used: at };
}

const STREAM_TYPES: ReadonlySet<string> = new Set<ExecStream>(['stdin', 'stdout', 'stderr', 'error', 'resize']);

/** Both directions of an exec or attach session over SPDY/3.1, as its streams. */
export class SpdyExecReader implements ExecStreamReader {
  readonly #events: ExecStreamEvents;
  readonly #streams = new Map<number, ExecStream>();
  readonly #client: SpdyFrameReader;
  readonly #server: SpdyFrameReader;
  readonly #inflater: SpdyHeaderInflater;
  /** DATA that arrived while a SYN_STREAM's block was still inflating, in order */
  #waiting: { fromClient: boolean; streamId: number; bytes: Buffer }[] = [];
  #waitingBytes = 0;
  #failed = false;
  /** the client's last stream: spdystream resets a stream id at or below it, and the first one stands */
  #lastClientStream = 0;

  constructor(events: ExecStreamEvents) {
    this.#events = events;
    this.#inflater = new SpdyHeaderInflater(
      (type, streamId, headers) => {
        if (type === TYPE_SYN_STREAM) {
          if (streamId % 2 === 0 || streamId <= this.#lastClientStream) {
            this.#fail(
              new UnreadableStream(
                `a SPDY stream ${streamId} opened by the client after its stream ${this.#lastClientStream}`,
              ),
            );
            return;
          }
          this.#lastClientStream = streamId;
          const kind = headers.get('streamtype');
          if (kind && STREAM_TYPES.has(kind)) this.#streams.set(streamId, kind as ExecStream);
        }
        if (this.#inflater.pending === 0) this.#drain();
      },
      (err) => this.#fail(err),
    );
    this.#client = new SpdyFrameReader({
      headers: (type, streamId, block) => this.#inflater.push(type, streamId, block),
      data: (streamId, bytes) => this.#data(true, streamId, bytes),
    });
    this.#server = new SpdyFrameReader({ data: (streamId, bytes) => this.#data(false, streamId, bytes) });
  }

  fromClient(bytes: Buffer): void {
    this.#client.feed(bytes);
  }

  fromServer(bytes: Buffer): void {
    this.#server.feed(bytes);
  }

  /** header blocks not yet inflated (what waits for them is reported once they are) */
  get pending(): number {
    return this.#failed ? 0 : this.#inflater.pending;
  }

  close(): void {
    this.#inflater.close();
    this.#waiting = [];
  }

  #data(fromClient: boolean, streamId: number, bytes: Buffer): void {
    if (this.#failed || bytes.length === 0) return;
    if (this.#inflater.pending > 0) {
      this.#waitingBytes += bytes.length;
      if (this.#waitingBytes > MAX_WAITING_BYTES)
        throw new UnreadableStream(`over ${MAX_WAITING_BYTES} bytes of SPDY data waiting for their streams' headers`);
      this.#waiting.push({ fromClient, streamId, bytes });
      return;
    }
    this.#deliver(fromClient, streamId, bytes);
  }

  #deliver(fromClient: boolean, streamId: number, bytes: Buffer): void {
    const stream = this.#streams.get(streamId);
    if (stream && (fromClient ? FROM_CLIENT : FROM_SERVER).has(stream)) this.#events.data(stream, bytes);
  }

  #drain(): void {
    const waiting = this.#waiting;
    this.#waiting = [];
    this.#waitingBytes = 0;
    for (const w of waiting) this.#deliver(w.fromClient, w.streamId, w.bytes);
  }

  #fail(err: Error): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#waiting = [];
    this.#events.failed(err);
  }
}
