import { Duplex } from 'node:stream';
import WebSocket from 'ws';

/** bytes queued in the WebSocket before writes wait for the socket to drain */
const WRITE_HIGH_WATER_BYTES = 1024 * 1024;

/**
 * The SSH byte stream over WebSocket binary messages: one message per write (several coalesced
 * writes become one), backpressure both ways, and a close of either side closes the other.
 */
export class WebSocketStream extends Duplex {
  readonly ws: WebSocket;
  readonly remoteAddress: string | undefined;

  constructor(ws: WebSocket, remoteAddress?: string) {
    super({ allowHalfOpen: false, readableHighWaterMark: 512 * 1024, writableHighWaterMark: 512 * 1024 });
    this.ws = ws;
    this.remoteAddress = remoteAddress;
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data: Buffer) => {
      if (!this.push(data)) ws.pause();
    });
    ws.on('close', () => {
      this.push(null);
      this.destroy();
    });
    ws.on('error', (err) => this.destroy(err));
  }

  override _read(): void {
    if (this.ws.isPaused) this.ws.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#send(chunk, cb);
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    this.#send(chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk)), cb);
  }

  #send(data: Buffer, cb: (err?: Error | null) => void): void {
    if (this.ws.readyState !== WebSocket.OPEN) {
      cb(new Error('WebSocket is closed'));
      return;
    }
    // don't wait for each frame to reach the kernel unless the queue is already long
    const waitForFlush = this.ws.bufferedAmount > WRITE_HIGH_WATER_BYTES;
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
