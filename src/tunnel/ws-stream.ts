import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import WebSocket from 'ws';

/** bytes queued in the WebSocket before writes wait for the socket to drain */
const WRITE_HIGH_WATER_BYTES = 1024 * 1024;
/** the largest message sent: tower's endpoints accept 256 KiB, Go's gorilla has no limit */
export const MAX_MESSAGE_BYTES = 128 * 1024;

/**
 * The SSH byte stream over WebSocket binary messages: one message per write (several coalesced
 * writes become one), backpressure both ways, and a close of either side closes the other.
 */
export class WebSocketStream extends Duplex {
  readonly ws: WebSocket;
  readonly remoteAddress: string | undefined;
  #corked = false;

  constructor(ws: WebSocket, remoteAddress?: string) {
    super({ allowHalfOpen: false, readableHighWaterMark: 512 * 1024, writableHighWaterMark: 512 * 1024 });
    this.ws = ws;
    this.remoteAddress = remoteAddress;
    ws.binaryType = 'nodebuffer';
    // SSH packets are latency-sensitive and already sized: no Nagle on either side
    this.#socket?.setNoDelay(true);
    ws.on('message', (data: Buffer) => {
      if (!this.push(data)) ws.pause();
    });
    ws.on('close', () => {
      this.push(null);
      this.destroy();
    });
    ws.on('error', (err) => this.destroy(err));
  }

  /** bytes through the connection underneath, both ways (WebSocket framing and TLS included) */
  get bytes(): { read: number; written: number } {
    const s = this.#socket;
    return { read: s?.bytesRead ?? 0, written: s?.bytesWritten ?? 0 };
  }

  /** ws keeps its net.Socket private; corking it is safe, ws corks it around every frame itself */
  get #socket(): Socket | undefined {
    return (this.ws as unknown as { _socket?: Socket })._socket;
  }

  override _read(): void {
    if (this.ws.isPaused) this.ws.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#send(chunk, cb);
  }

  /** Writes that queued while the socket drained: as few messages as fit the peer's frame limit. */
  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    let group: Buffer[] = [];
    let size = 0;
    const messages: Buffer[] = [];
    for (const { chunk } of chunks) {
      if (size + chunk.length > MAX_MESSAGE_BYTES && group.length) {
        messages.push(group.length === 1 ? group[0]! : Buffer.concat(group, size));
        group = [];
        size = 0;
      }
      group.push(chunk);
      size += chunk.length;
    }
    messages.push(group.length === 1 ? group[0]! : Buffer.concat(group, size));
    const last = messages.pop()!;
    for (const m of messages) this.#send(m);
    this.#send(last, cb);
  }

  #send(data: Buffer, cb?: (err?: Error | null) => void): void {
    if (this.ws.readyState !== WebSocket.OPEN) {
      cb?.(new Error('WebSocket is closed'));
      return;
    }
    // the frames of one tick leave in one writev: cork the socket until the tick ends (no copies)
    if (!this.#corked && this.#socket) {
      const socket = this.#socket;
      this.#corked = true;
      socket.cork();
      process.nextTick(() => {
        this.#corked = false;
        socket.uncork();
      });
    }
    // don't wait for each frame to reach the kernel unless the queue is already long
    const waitForFlush = this.ws.bufferedAmount > WRITE_HIGH_WATER_BYTES;
    if (!cb) {
      this.ws.send(data, { binary: true, compress: false });
      return;
    }
    this.ws.send(data, { binary: true, compress: false }, waitForFlush ? (err) => cb(err ?? null) : undefined);
    if (!waitForFlush) cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    cb();
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    const ws = this.ws;
    if (ws.readyState === WebSocket.OPEN) {
      ws.close(err ? 1011 : 1000);
      // a peer that never answers the close frame must not hold the socket
      const t = setTimeout(() => ws.terminate(), 2000);
      t.unref();
      ws.once('close', () => clearTimeout(t));
    } else if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.CLOSING) {
      ws.terminate();
    }
    cb(err);
  }
}
