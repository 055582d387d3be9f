import {
  FROM_CLIENT,
  FROM_SERVER,
  UnreadableStream,
  type ExecStream,
  type ExecStreamEvents,
  type ExecStreamReader,
} from './exec-streams.ts';

/**
 * Kubernetes' WebSocket channel protocols for exec and attach (`channel.k8s.io`, `v4.channel.k8s.io`,
 * `v5.channel.k8s.io`, and the base64 ones): each message's first byte (an ASCII digit in the base64 protocols,
 * whose payload is base64 text) names its channel. RFC 6455 framing, read as it streams: a frame's payload is never
 * held, only a frame head (14 bytes at most), a base64 remainder (3 characters) and the channel of the message.
 */

/** the subprotocols read here, and whether they encode payloads as base64 */
export const CHANNEL_PROTOCOLS: ReadonlyMap<string, { base64: boolean }> = new Map([
  ['channel.k8s.io', { base64: false }],
  ['v4.channel.k8s.io', { base64: false }],
  ['v5.channel.k8s.io', { base64: false }],
  ['base64.channel.k8s.io', { base64: true }],
  ['v4.base64.channel.k8s.io', { base64: true }],
]);

const CHANNELS: readonly ExecStream[] = ['stdin', 'stdout', 'stderr', 'error', 'resize'];
const ALL_STREAMS: ReadonlySet<ExecStream> = new Set(CHANNELS);
const MAX_HEAD_BYTES = 14;
const MAX_CONTROL_PAYLOAD_BYTES = 125;
const OP_CONTINUATION = 0;
const OP_TEXT = 1;
const OP_BINARY = 2;
const OP_CLOSE = 8;
const OP_PING = 9;
const OP_PONG = 10;

/** One direction of a WebSocket connection, message by message: (channel, payload bytes) as they stream. */
export class WebSocketChannelReader {
  readonly #masked: boolean;
  readonly #base64: boolean;
  readonly #onData: (channel: number, bytes: Buffer) => void;
  #head = Buffer.alloc(MAX_HEAD_BYTES);
  #headBytes = 0;
  /** payload bytes left in the current frame; -1 while reading a frame head */
  #remaining = -1;
  #mask: Buffer | undefined;
  #maskAt = 0;
  #control = false;
  #fin = false;
  #inMessage = false;
  /** the current message's channel; -1 until its first payload byte */
  #channel = -1;
  #base64Rest = '';
  #closed = false;

  /** `masked`: the client's direction, whose frames RFC 6455 masks; the server's never are */
  readonly #wanted: (channel: number) => boolean;

  /**
   * `masked`: the client's direction, whose frames RFC 6455 masks; the server's never are. `wanted`: the channels
   * whose payload is reported (the others are skipped, not unmasked nor decoded)
   */
  constructor(opts: {
    masked: boolean;
    base64: boolean;
    onData: (channel: number, bytes: Buffer) => void;
    wanted?: (channel: number) => boolean;
  }) {
    this.#masked = opts.masked;
    this.#base64 = opts.base64;
    this.#onData = opts.onData;
    this.#wanted = opts.wanted ?? (() => true);
  }

  feed(input: Buffer): void {
    let at = 0;
    while (at < input.length && !this.#closed) {
      if (this.#remaining < 0) {
        at = this.#readHead(input, at);
        continue;
      }
      const n = Math.min(this.#remaining, input.length - at);
      const part = input.subarray(at, at + n);
      at += n;
      this.#remaining -= n;
      if (!this.#control) {
        // past its channel byte, a message nobody wants is skipped as it is
        if (this.#channel >= 0 && !this.#wanted(this.#channel)) this.#maskAt = (this.#maskAt + part.length) & 3;
        else this.#payload(this.#unmask(part));
      }
      if (this.#remaining === 0) this.#frameEnded();
    }
  }

  /** Reads head bytes from `at`; returns where it stopped. */
  #readHead(input: Buffer, at: number): number {
    const need = () => {
      if (this.#headBytes < 2) return 2;
      const len7 = this.#head[1]! & 0x7f;
      return 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (this.#head[1]! & 0x80 ? 4 : 0);
    };
    while (at < input.length && this.#headBytes < need()) this.#head[this.#headBytes++] = input[at++]!;
    if (this.#headBytes < need()) return at;
    const h = this.#head;
    const fin = (h[0]! & 0x80) !== 0;
    const opcode = h[0]! & 0x0f;
    const masked = (h[1]! & 0x80) !== 0;
    // no extension is negotiated on these connections: a reserved bit is something else
    if (h[0]! & 0x70) throw new UnreadableStream('a WebSocket frame with reserved bits set');
    if (masked !== this.#masked)
      throw new UnreadableStream(`a ${masked ? 'masked' : 'unmasked'} WebSocket frame from the ${this.#side}`);
    let length = h[1]! & 0x7f;
    let o = 2;
    if (length === 126) {
      length = h.readUInt16BE(2);
      o = 4;
    } else if (length === 127) {
      const high = h.readUInt32BE(2);
      if (high >= 2 ** 21) throw new UnreadableStream('a WebSocket frame longer than 2^53 bytes');
      length = high * 2 ** 32 + h.readUInt32BE(6);
      o = 10;
    }
    this.#mask = masked ? Buffer.from(h.subarray(o, o + 4)) : undefined;
    this.#maskAt = 0;
    this.#headBytes = 0;
    this.#fin = fin;
    this.#control = opcode >= 8;
    if (this.#control) {
      if (opcode !== OP_CLOSE && opcode !== OP_PING && opcode !== OP_PONG)
        throw new UnreadableStream(`a WebSocket frame of reserved opcode ${opcode}`);
      if (!fin || length > MAX_CONTROL_PAYLOAD_BYTES) throw new UnreadableStream('a malformed WebSocket control frame');
      // nothing after a close is part of the session
      if (opcode === OP_CLOSE) this.#closed = true;
    } else if (this.#masked && (!fin || opcode === OP_CONTINUATION)) {
      // the kubelet (x/net/websocket) reads each frame as a message, its first byte a channel: a fragment is read
      // otherwise here and there
      throw new UnreadableStream('a fragmented WebSocket message from the client');
    } else if (opcode === OP_CONTINUATION) {
      if (!this.#inMessage) throw new UnreadableStream('a WebSocket continuation frame outside a message');
    } else if (opcode === OP_TEXT || opcode === OP_BINARY) {
      if (this.#inMessage) throw new UnreadableStream('a WebSocket message begun inside another');
      this.#inMessage = true;
      this.#channel = -1;
      this.#base64Rest = '';
    } else {
      throw new UnreadableStream(`a WebSocket frame of reserved opcode ${opcode}`);
    }
    this.#remaining = length;
    if (length === 0) this.#frameEnded();
    return at;
  }

  get #side(): string {
    return this.#masked ? 'client' : 'server';
  }

  /** a copy, unmasked: the bytes relayed stay as they are */
  #unmask(part: Buffer): Buffer {
    const mask = this.#mask;
    if (!mask) return part;
    const out = Buffer.allocUnsafe(part.length);
    for (let i = 0; i < part.length; i++) out[i] = part[i]! ^ mask[(this.#maskAt + i) & 3]!;
    this.#maskAt = (this.#maskAt + part.length) & 3;
    return out;
  }

  #payload(bytes: Buffer): void {
    if (bytes.length === 0) return;
    if (this.#channel < 0) {
      const first = bytes[0]!;
      if (this.#base64) {
        if (first < 0x30 || first > 0x39)
          throw new UnreadableStream('a base64 channel message without its channel digit');
        this.#channel = first - 0x30;
      } else {
        this.#channel = first;
      }
      bytes = bytes.subarray(1);
      if (bytes.length === 0 || !this.#wanted(this.#channel)) return;
    }
    if (!this.#base64) {
      this.#onData(this.#channel, bytes);
      return;
    }
    // as Go's decoder: CR and LF are skipped, anything else outside the alphabet is an error
    const clean = bytes.toString('latin1').replace(/[\r\n]/g, '');
    if (/[^A-Za-z0-9+/=]/.test(clean)) throw new UnreadableStream('a base64 channel message that is not base64');
    const text = this.#base64Rest + clean;
    const whole = text.length - (text.length % 4);
    this.#base64Rest = text.slice(whole);
    if (whole > 0) this.#onData(this.#channel, Buffer.from(text.slice(0, whole), 'base64'));
  }

  #frameEnded(): void {
    this.#remaining = -1;
    if (this.#control || !this.#fin) return;
    if (this.#base64Rest && this.#channel >= 0 && this.#wanted(this.#channel))
      this.#onData(this.#channel, Buffer.from(this.#base64Rest, 'base64'));
    this.#inMessage = false;
    this.#channel = -1;
    this.#base64Rest = '';
  }
}

/** Both directions of an exec or attach session over a channel protocol, as its streams. */
export class WebSocketExecReader implements ExecStreamReader {
  #client: WebSocketChannelReader;
  #server: WebSocketChannelReader;

  /** `wanted`: the streams reported (stdin's payload is not even unmasked without it) */
  constructor(protocol: string, events: ExecStreamEvents, wanted: ReadonlySet<ExecStream> = ALL_STREAMS) {
    const known = CHANNEL_PROTOCOLS.get(protocol);
    if (!known) throw new UnreadableStream(`WebSocket subprotocol ${JSON.stringify(protocol.slice(0, 64))}`);
    const route = (allowed: ReadonlySet<ExecStream>) => (channel: number, bytes: Buffer) => {
      const stream = CHANNELS[channel];
      // channel 255 (v5) closes a stream; unknown channels carry nothing a person saw
      if (stream && allowed.has(stream)) events.data(stream, bytes);
    };
    const want = (channel: number) => wanted.has(CHANNELS[channel]!);
    this.#client = new WebSocketChannelReader({
      masked: true,
      base64: known.base64,
      onData: route(FROM_CLIENT),
      wanted: want,
    });
    this.#server = new WebSocketChannelReader({
      masked: false,
      base64: known.base64,
      onData: route(FROM_SERVER),
      wanted: want,
    });
  }

  fromClient(bytes: Buffer): void {
    this.#client.feed(bytes);
  }

  fromServer(bytes: Buffer): void {
    this.#server.feed(bytes);
  }

  close(): void {}
}
