/**
 * The agent's view of the HTTP/1.1 on one channel: one request at a time, each answered in full
 * before the next may begin. The proxy is a stranger here: a request head it sends before the
 * previous answer has ended, framing the member could read otherwise than tower does (both
 * Content-Length and Transfer-Encoding, a coding other than chunked, folded or nameless header
 * lines), or a body on an upgrade is a violation that ends the channel; nothing more of it is
 * forwarded. So a framing bug anywhere upstream cannot become a second request made with the
 * agent's rights, nor an answer that reaches a client other than the one whose request it answers.
 *
 * Bodies pass through untouched and uncopied; after a 101 everything does, shown as it leaves to a tap
 * when one was asked for (the exec recorder), which reads it and never holds it back. Not a stream:
 * bytes go to `toMember` / `toProxy` in the caller's turn.
 */
import type { HeadLines } from './request-info.ts';

/** a request or response head larger than this is not HTTP the proxy or a member would send */
export const MAX_HEAD_BYTES = 64 * 1024;
const MAX_LINE_BYTES = 8 * 1024;
const CRLF = Buffer.from('\r\n');
const NOTHING = Buffer.alloc(0);
const HEAD_END = Buffer.from('\r\n\r\n');
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP\/1\.([01])$/;
const STATUS_LINE = /^HTTP\/1\.[01] ([1-9]\d\d)(?: [^\x00-\x08\x0a-\x1f\x7f]*)?$/;
const CHUNK_SIZE = /^([0-9a-fA-F]{1,15})(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?$/;

/** The proxy or the member broke HTTP/1.1 on a channel: the channel ends, with this as the reason. */
export class ExchangeViolation extends Error {}

type Body = { kind: 'none' } | { kind: 'length'; bytes: number } | { kind: 'chunked' } | { kind: 'close' };
type State = 'head' | 'length' | 'chunk-size' | 'chunk-data' | 'chunk-end' | 'trailers' | 'close' | 'tunnel';

interface Head {
  /** the request line or status line */
  first: string;
  /** header lines as sent, each with its name in lower case */
  lines: { name: string; value: string; raw: string }[];
}

interface Message {
  /** bytes to send on for this head (the head, possibly rewritten) and how its body is framed */
  out: Buffer;
  body: Body;
}

interface Hooks {
  /** a message begins now; throws when none may */
  begin: () => void;
  /** `raw`: the head as it arrived, blank line included */
  head: (head: Head, raw: Buffer) => Message;
  end: () => void;
}

/**
 * One direction's HTTP/1.1 messages, parsed just enough to know where each ends: the head whole,
 * the body by its framing, never copied.
 */
class MessageStream {
  #state: State = 'head';
  /** what arrived of a head or chunk line so far, read by read (joined once, when it ends) */
  #partial: Buffer[] | undefined;
  #partialBytes = 0;
  /** the last bytes of #partial, where the end of a head or line may begin */
  #tail: Buffer = NOTHING;
  #remaining = 0;
  readonly #what: string;
  readonly #push: (b: Buffer) => void;
  readonly #hooks: Hooks;

  constructor(what: string, push: (b: Buffer) => void, hooks: Hooks) {
    this.#what = what;
    this.#push = push;
    this.#hooks = hooks;
  }

  /** from now on every byte passes through as it is */
  tunnel(): void {
    this.#state = 'tunnel';
    const rest = this.#partial;
    this.#partial = undefined;
    if (rest) this.#push(Buffer.concat(rest));
  }

  get idle(): boolean {
    return this.#state === 'head' && this.#partial === undefined;
  }

  feed(input: Buffer): void {
    let buf = input;
    while (buf.length > 0) {
      switch (this.#state) {
        case 'tunnel':
        case 'close':
          this.#push(buf);
          return;
        case 'length':
        case 'chunk-data': {
          const n = Math.min(this.#remaining, buf.length);
          this.#push(buf.subarray(0, n));
          buf = buf.subarray(n);
          this.#remaining -= n;
          if (this.#remaining === 0) {
            if (this.#state === 'length') this.#ended();
            else {
              this.#state = 'chunk-end';
              this.#remaining = 2;
            }
          }
          break;
        }
        case 'chunk-end': {
          // the CRLF after a chunk's data, perhaps split across reads
          const n = Math.min(this.#remaining, buf.length);
          if (!CRLF.subarray(2 - this.#remaining, 2 - this.#remaining + n).equals(buf.subarray(0, n)))
            throw new ExchangeViolation(`${this.#what}: a chunk not followed by CRLF`);
          this.#push(buf.subarray(0, n));
          buf = buf.subarray(n);
          this.#remaining -= n;
          if (this.#remaining === 0) this.#state = 'chunk-size';
          break;
        }
        case 'head': {
          if (this.#partial === undefined) this.#hooks.begin();
          const found = this.#upTo(buf, HEAD_END, MAX_HEAD_BYTES, 'head');
          if (!found) return;
          buf = found.rest;
          const head = parseHead(found.text.subarray(0, found.text.length - 4).toString('latin1'), this.#what);
          if (!head) continue;
          const m = this.#hooks.head(head, found.text);
          this.#push(m.out);
          this.#start(m.body);
          break;
        }
        case 'chunk-size':
        case 'trailers': {
          const found = this.#upTo(buf, CRLF, MAX_LINE_BYTES, 'chunk line');
          if (!found) return;
          buf = found.rest;
          const line = found.text.subarray(0, found.text.length - 2).toString('latin1');
          // judged before it goes on: a line one end reads as two (a bare LF) never reaches the member
          if (/[\r\n]/.test(line)) throw new ExchangeViolation(`${this.#what}: a bare CR or LF in a chunk line`);
          if (this.#state === 'trailers' && line.length > 0) headerLine(line, `${this.#what}: a trailer`);
          else if (this.#state === 'chunk-size' && !CHUNK_SIZE.test(line))
            throw new ExchangeViolation(`${this.#what}: a malformed chunk size`);
          this.#push(found.text);
          if (this.#state === 'chunk-size') {
            const size = parseInt(CHUNK_SIZE.exec(line)![1]!, 16);
            if (size === 0) this.#state = 'trailers';
            else {
              this.#state = 'chunk-data';
              this.#remaining = size;
            }
          } else if (line.length === 0) {
            this.#ended();
          }
          break;
        }
      }
    }
  }

  /** the other end closed: a body read until close ends here; anything else was cut short */
  closed(): void {
    if (this.#state === 'close') this.#ended();
  }

  #start(body: Body): void {
    switch (body.kind) {
      case 'none':
        this.#ended();
        break;
      case 'length':
        this.#state = 'length';
        this.#remaining = body.bytes;
        break;
      case 'chunked':
        this.#state = 'chunk-size';
        break;
      case 'close':
        this.#state = 'close';
        break;
    }
  }

  #ended(): void {
    this.#state = 'head';
    this.#hooks.end();
  }

  /**
   * The bytes up to and including `end`, with what arrived before (kept across calls), and the
   * rest; undefined while `end` has not arrived (at most `max` bytes are kept waiting for it).
   */
  #upTo(buf: Buffer, end: Buffer, max: number, what: string): { text: Buffer; rest: Buffer } | undefined {
    if (this.#partial === undefined) {
      const at = buf.indexOf(end);
      if (at >= 0) return { text: buf.subarray(0, at + end.length), rest: buf.subarray(at + end.length) };
      if (buf.length > max) throw new ExchangeViolation(`${this.#what}: a ${what} over ${max} bytes`);
      this.#partial = [Buffer.from(buf)];
      this.#partialBytes = buf.length;
      this.#tail = this.#partial[0]!.subarray(Math.max(0, buf.length - end.length + 1));
      return undefined;
    }
    // `end` may begin in what came before: only that tail is searched again, never all that is held
    const window = Buffer.concat([this.#tail, buf]);
    const at = window.indexOf(end);
    if (at < 0) {
      this.#partialBytes += buf.length;
      if (this.#partialBytes > max) throw new ExchangeViolation(`${this.#what}: a ${what} over ${max} bytes`);
      this.#partial.push(Buffer.from(buf));
      this.#tail = window.subarray(Math.max(0, window.length - end.length + 1));
      return undefined;
    }
    const cut = at + end.length - this.#tail.length;
    const text = Buffer.concat([...this.#partial, buf.subarray(0, cut)]);
    this.#partial = undefined;
    this.#partialBytes = 0;
    this.#tail = NOTHING;
    return { text, rest: buf.subarray(cut) };
  }
}

/** A head's lines; undefined for the empty lines allowed between messages. */
function parseHead(text: string, what: string): Head | undefined {
  // Go ends a line at a bare LF, and these split only at CRLF: "X: a\n\r\n" would end a head there
  // and not here, and what follows would be a request the agent never read
  if (/\r(?!\n)|(?<!\r)\n/.test(text)) throw new ExchangeViolation(`${what}: a bare CR or LF in a head`);
  const all = text.split('\r\n');
  // a stray CRLF before a message is allowed (RFC 9112 §2.2)
  while (all.length && all[0] === '') all.shift();
  if (all.length === 0) return undefined;
  const lines: Head['lines'] = [];
  for (let i = 1; i < all.length; i++) lines.push(headerLine(all[i]!, what));
  return { first: all[0]!, lines };
}

/** One header (or trailer) line, as every reader of it agrees it reads; a violation otherwise. */
function headerLine(raw: string, what: string): Head['lines'][number] {
  const colon = raw.indexOf(':');
  const name = colon > 0 ? raw.slice(0, colon) : '';
  // folded lines, nameless ones, spaces before the colon: read otherwise by one server or another
  if (!TOKEN.test(name)) throw new ExchangeViolation(`${what}: a malformed header line`);
  const rawValue = raw.slice(colon + 1);
  // judged before trimming (JavaScript's trim takes more than HTTP's spaces and tabs)
  if (/[\x00-\x08\x0a-\x1f\x7f]/.test(rawValue))
    throw new ExchangeViolation(`${what}: a control character in header ${name}`);
  const value = rawValue.replace(/^[ \t]+|[ \t]+$/g, '');
  return { name: name.toLowerCase(), value, raw: `${name}: ${value}` };
}

/** How a head frames its body: by the one reading both ends agree on, or a violation. */
function framing(head: Head, what: string): Body | undefined {
  let te: string | undefined;
  let cl: string | undefined;
  for (const { name, value } of head.lines) {
    if (name === 'transfer-encoding') {
      if (te !== undefined) throw new ExchangeViolation(`${what}: Transfer-Encoding twice`);
      te = value;
    } else if (name === 'content-length') {
      if (!/^\d{1,15}$/.test(value) || (cl !== undefined && cl !== value))
        throw new ExchangeViolation(`${what}: an invalid Content-Length`);
      cl = value;
    }
  }
  if (te !== undefined) {
    if (cl !== undefined) throw new ExchangeViolation(`${what}: both Content-Length and Transfer-Encoding`);
    if (te.toLowerCase() !== 'chunked')
      throw new ExchangeViolation(`${what}: Transfer-Encoding ${JSON.stringify(te.slice(0, 64))} (only chunked)`);
    return { kind: 'chunked' };
  }
  if (cl !== undefined) return Number(cl) > 0 ? { kind: 'length', bytes: Number(cl) } : { kind: 'none' };
  return undefined;
}

function valuesOf(head: Head, name: string): string[] {
  const lower = name.toLowerCase();
  return head.lines.filter((l) => l.name === lower).map((l) => l.value);
}

export interface ExchangeOptions {
  /** the member's credentials: each request head loses any Authorization and gains this one */
  authorization?: string;
  /** bytes for the member (requests) */
  toMember: (b: Buffer) => void;
  /** bytes for the proxy (answers) */
  toProxy: (b: Buffer) => void;
  /** the exchange is over and the channel should end (an upgrade the member refused, a refused request) */
  onDone?: () => void;
  /**
   * asked at each request head: an answer the agent gives itself instead of forwarding the request
   * (a 429 while it is over a limit), after which nothing more of the channel is forwarded
   */
  refuse?: () => Buffer | undefined;
  /**
   * asked at each request head that `refuse` let pass: the answer to give instead of forwarding it (a
   * member policy's 403), after which nothing more of the channel is forwarded
   */
  judge?: (method: string, target: string, lines: HeadLines) => Buffer | undefined;
  /**
   * asked at each request head the exchange would forward: for an upgrade, a tap shown, once the member switches
   * protocols, a copy of what passes each way (it never alters nor delays it); for any request, an answer the agent
   * gives itself instead, as with `refuse`
   */
  tap?: (request: RequestView) => UpgradeTap | Buffer | undefined;
}

/** A request head, as a tap reads it. */
export interface RequestView {
  method: string;
  target: string;
  /** whether the member may switch protocols on it (Go's reading: a Connection that mentions upgrade) */
  upgrade: boolean;
  /** every value of a header, in order (name in any case) */
  values: (name: string) => string[];
}

/** What watches an upgraded exchange; it must not throw. */
export interface UpgradeTap {
  /** the member's final answer to the upgrade: 101 and its head's header values, or a status that ends it */
  answered: (status: number, values: (name: string) => string[]) => void;
  /**
   * bytes after the 101, shown before they are relayed; false: they must not be (the session was ended because
   * they cannot be recorded)
   */
  fromProxy: (b: Buffer) => boolean;
  fromMember: (b: Buffer) => boolean;
}

/** One channel's requests and answers, strictly in turn. */
export class HttpExchange {
  #requests: MessageStream;
  #answers: MessageStream;
  /**
   * the request being answered: its method, whether it asks to upgrade, whether it was all sent,
   * whether its final answer has begun and whether it has ended (an answer may begin, and end,
   * before its request is all sent: the exchange is over when both are)
   */
  #open: { head: boolean; upgrade: boolean; sent: boolean; answered: boolean; ended: boolean } | undefined;
  #authLine: Buffer | undefined;
  #opts: ExchangeOptions;
  #tunnel = false;
  /** a request was answered here instead: nothing more goes to the member */
  #refused = false;
  #tap: UpgradeTap | undefined;
  /** the tap is shown what passes: from the first byte after the 101 */
  #tapping = false;
  /** requests forwarded so far */
  requests = 0;

  constructor(opts: ExchangeOptions) {
    this.#opts = opts;
    this.#authLine = opts.authorization ? Buffer.from(`Authorization: ${opts.authorization}\r\n`, 'latin1') : undefined;
    this.#requests = new MessageStream(
      'a request from the proxy',
      (b) => {
        if (this.#refused) return;
        // read by the tap first: what a fail-closed recording cannot read never reaches the member
        if (this.#tapping && !this.#tap!.fromProxy(b)) return;
        opts.toMember(b);
      },
      {
        begin: () => {
          if (this.#open) throw new ExchangeViolation('the proxy sent a request before the previous answer ended');
        },
        head: (head) => this.#request(head),
        end: () => this.#requestSent(),
      },
    );
    this.#answers = new MessageStream(
      'an answer from the member',
      (b) => {
        // and what it cannot read never reaches the client
        if (this.#tapping && !this.#tap!.fromMember(b)) return;
        opts.toProxy(b);
      },
      {
        begin: () => {
          if (!this.#open || this.#open.answered)
            throw new ExchangeViolation('the member sent an answer to no request');
        },
        head: (head, raw) => this.#answer(head, raw),
        end: () => this.#answerEnded(),
      },
    );
  }

  /** after a 101: bytes pass through as they are */
  get tunnel(): boolean {
    return this.#tunnel;
  }

  /** bytes the proxy sent; throws ExchangeViolation */
  fromProxy(chunk: Buffer): void {
    if (!this.#refused) this.#requests.feed(chunk);
  }

  /** bytes the member sent; throws ExchangeViolation */
  fromMember(chunk: Buffer): void {
    this.#answers.feed(chunk);
  }

  /** the member closed its side: an answer read until close ends here */
  memberEnded(): void {
    this.#answers.closed();
  }

  #request(head: Head): Message {
    const what = 'a request from the proxy';
    const m = REQUEST_LINE.exec(head.first);
    if (!m) throw new ExchangeViolation(`${what}: a malformed request line`);
    if (m[1] === 'CONNECT') throw new ExchangeViolation(`${what}: CONNECT`);
    // as Go's httpstream.IsUpgradeRequest, which kube-apiserver's proxies use: any Connection that mentions it
    const upgrade = head.lines.some((l) => l.name === 'connection' && l.value.toLowerCase().includes('upgrade'));
    const body = framing(head, what) ?? { kind: 'none' };
    if (upgrade && body.kind !== 'none') throw new ExchangeViolation(`${what}: an upgrade with a body`);
    // Go ignores Transfer-Encoding in HTTP/1.0, and would read the chunks as requests
    if (m[3] === '0' && head.lines.some((l) => l.name === 'transfer-encoding'))
      throw new ExchangeViolation(`${what}: Transfer-Encoding in HTTP/1.0`);
    const refusal =
      this.#opts.refuse?.() ?? this.#opts.judge?.(m[1]!, m[2]!, head.lines) ?? this.#tapOf(m[1]!, m[2]!, head, upgrade);
    if (refusal) {
      this.#refused = true;
      this.#opts.toProxy(refusal);
      this.#opts.onDone?.();
      // the rest of this request, and whatever follows it, goes nowhere
      return { out: NOTHING, body: { kind: 'close' } };
    }
    this.#open = { head: m[1] === 'HEAD', upgrade, sent: false, answered: false, ended: false };
    this.requests++;
    // the head goes on as the agent read it, line by line, never as the bytes that came: nothing it did not
    // read the same way the member will can pass
    let text = head.first + '\r\n';
    for (const l of head.lines) if (!this.#authLine || l.name !== 'authorization') text += l.raw + '\r\n';
    if (!this.#authLine) return { out: Buffer.from(text + '\r\n', 'latin1'), body };
    return { out: Buffer.concat([Buffer.from(text, 'latin1'), this.#authLine, CRLF]), body };
  }

  /** Asks for a tap on this upgrade: undefined, or the answer the agent gives instead of forwarding it. */
  #tapOf(method: string, target: string, head: Head, upgrade: boolean): Buffer | undefined {
    const tapped = this.#opts.tap?.({ method, target, upgrade, values: (name) => valuesOf(head, name) });
    if (Buffer.isBuffer(tapped)) return tapped;
    // only an upgrade has anything after its head to watch
    if (upgrade) this.#tap = tapped;
    return undefined;
  }

  #requestSent(): void {
    const open = this.#open!;
    open.sent = true;
    if (open.ended) this.#open = undefined;
  }

  #answer(head: Head, out: Buffer): Message {
    const what = 'an answer from the member';
    const m = STATUS_LINE.exec(head.first);
    if (!m) throw new ExchangeViolation(`${what}: a malformed status line`);
    const code = Number(m[1]);
    const open = this.#open!;
    if (code === 101) {
      if (!open.upgrade || !open.sent)
        throw new ExchangeViolation(`${what}: 101 Switching Protocols to a request that did not ask for it`);
      this.#tunnel = true;
      this.#tap?.answered(code, (name) => valuesOf(head, name));
      // after this head, both ways carry another protocol
      return { out, body: { kind: 'none' } };
    }
    // interim answers (100 Continue, 103) precede the final one
    if (code < 200) return { out, body: { kind: 'none' } };
    open.answered = true;
    if (open.upgrade) this.#tap?.answered(code, (name) => valuesOf(head, name));
    if (open.head || code === 204 || code === 304) {
      framing(head, what);
      return { out, body: { kind: 'none' } };
    }
    return { out, body: framing(head, what) ?? { kind: 'close' } };
  }

  #answerEnded(): void {
    if (this.#tunnel) {
      // what the proxy sent after its request, held until now, is the first the tap sees
      this.#tapping = this.#tap !== undefined;
      this.#requests.tunnel();
      this.#answers.tunnel();
      this.#open = undefined;
      return;
    }
    const open = this.#open!;
    if (!open.answered) return;
    open.ended = true;
    // a refused upgrade ends its channel: it was opened for that one request
    if (open.upgrade) {
      this.#opts.onDone?.();
      return;
    }
    if (open.sent) this.#open = undefined;
  }
}
