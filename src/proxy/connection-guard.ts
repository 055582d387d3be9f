import { createServer, type Server, type Socket } from 'node:net';
import type { Server as HttpServer } from 'node:http';
import { Server as TlsServer } from 'node:tls';
import type { Duplex } from 'node:stream';
import { RepeatedEvents, type Logger } from '../observe/log.ts';

export interface ConnectionGuardOptions {
  /** connections counted at once, in total and per remote address */
  maxTotal: number;
  maxPerAddress: number;
  /** a connection that has not started a request (after its TLS handshake, where there is one) by then is closed */
  firstRequestMs: number;
  /** the port, for logs ("gateway", "agent port") */
  what: string;
  log: Logger;
}

/** Things held at once (connections, handshakes), counted in total and per remote address, with a cap on each. */
export class AddressCounts {
  readonly maxTotal: number;
  readonly maxPerAddress: number;
  #total = 0;
  #byAddress = new Map<string, number>();

  constructor(maxTotal: number, maxPerAddress: number) {
    this.maxTotal = maxTotal;
    this.maxPerAddress = maxPerAddress;
  }

  get total(): number {
    return this.#total;
  }

  /** Counts one more for `address`, or says which cap stands in the way. */
  acquire(address: string): 'total' | 'per-address' | undefined {
    const n = this.#byAddress.get(address) ?? 0;
    if (this.#total >= this.maxTotal) return 'total';
    if (n >= this.maxPerAddress) return 'per-address';
    this.#total++;
    this.#byAddress.set(address, n + 1);
    return undefined;
  }

  release(address: string): void {
    const n = this.#byAddress.get(address);
    if (n === undefined) return;
    this.#total--;
    if (n <= 1) this.#byAddress.delete(address);
    else this.#byAddress.set(address, n - 1);
  }
}

/**
 * Caps on the connections a listening port holds, in total and per address, and a deadline for a
 * connection's first request: strangers cannot hold sockets until the process runs out of them.
 */
export class ConnectionGuard {
  #opts: ConnectionGuardOptions;
  #counts: AddressCounts;
  /** "address:port" of each counted connection → its address */
  #counted = new Map<string, string>();
  /** every connection accepted and still open: close() ends them, whatever they wait for */
  #open = new Set<Duplex>();
  #deadlines = new WeakMap<Duplex, NodeJS.Timeout>();
  #refusals = new RepeatedEvents();

  constructor(opts: ConnectionGuardOptions) {
    this.#opts = opts;
    this.#counts = new AddressCounts(opts.maxTotal, opts.maxPerAddress);
  }

  get total(): number {
    return this.#counts.total;
  }

  /** Counts every TCP connection of `server`; one over a cap is closed at once. */
  attach(server: Server): void {
    server.on('connection', (socket: Duplex & { remoteAddress?: string }) => {
      if (!this.#admit(socket, socket.remoteAddress ?? 'unknown')) socket.destroy();
    });
  }

  /**
   * What should listen for `http`: a TLS server gets its connections once the client has spoken
   * (and must finish its handshake within `handshakeMs`); every connection is counted and must
   * start a request within the first-request deadline.
   */
  listenerFor(http: HttpServer, handshakeMs: number): Server {
    if (http instanceof TlsServer) {
      http.on('tlsClientError', (err, socket) => {
        this.#opts.log.debug(1, `TLS handshake failed on the ${this.#opts.what}`, {
          remote: socket.remoteAddress,
          err: err.message,
        });
        socket.destroy();
      });
      http.on('secureConnection', (socket) => this.armFirstRequest(socket));
      return this.#deferredTls(http, handshakeMs);
    }
    http.on('connection', (socket: Duplex) => this.armFirstRequest(socket));
    this.attach(http);
    return http;
  }

  /**
   * A TCP listener for `tls`: a connection is handed to it only once the client has sent its first
   * bytes (within `firstBytesMs`), so that a silent stranger costs a socket, not a TLS session.
   */
  #deferredTls(tls: TlsServer, firstBytesMs: number): Server {
    const waiting = new Set<Socket>();
    const listener = createServer((socket) => {
      if (socket.destroyed) return;
      waiting.add(socket);
      socket.on('error', () => socket.destroy());
      const timer = setTimeout(() => socket.destroy(), firstBytesMs);
      socket.once('close', () => {
        clearTimeout(timer);
        waiting.delete(socket);
      });
      socket.once('data', (first: Buffer) => {
        clearTimeout(timer);
        waiting.delete(socket);
        socket.pause();
        // the TLS layer reads what the socket already buffered
        socket.unshift(first);
        tls.emit('connection', socket);
      });
    });
    this.attach(listener);
    listener.on('close', () => {
      for (const s of waiting) s.destroy();
    });
    return listener;
  }

  #admit(socket: Duplex, address: string): boolean {
    const full = this.#counts.acquire(address);
    if (full) {
      this.#noteRefusal(full);
      return false;
    }
    const key = peerKey(socket);
    this.#counted.set(key, address);
    this.#open.add(socket);
    socket.once('close', () => {
      this.#open.delete(socket);
      this.release(socket);
    });
    return true;
  }

  /**
   * The connection no longer counts (closed, or an agent admitted: it is not pending any more).
   * `socket` may be the TCP socket or the TLS socket over it: the remote address and port tell.
   */
  release(socket: Duplex): void {
    const key = peerKey(socket);
    const address = this.#counted.get(key);
    if (address === undefined) return;
    this.#counted.delete(key);
    this.#counts.release(address);
  }

  /** Closes `socket` unless a request starts on it within the deadline. */
  armFirstRequest(socket: Duplex): void {
    const t = setTimeout(() => socket.destroy(), this.#opts.firstRequestMs);
    t.unref();
    this.#deadlines.set(socket, t);
    socket.once('close', () => clearTimeout(t));
  }

  /** A request started on `socket`: its first-request deadline is met. */
  seen(socket: Duplex): void {
    const t = this.#deadlines.get(socket);
    if (t === undefined) return;
    clearTimeout(t);
    this.#deadlines.delete(socket);
  }

  /**
   * The end: every connection still open is closed, so that closing the listener does not wait for
   * them. Without this a connection that never spoke (a load balancer's), a TLS handshake, or an
   * upgraded connection past the drain held the process until its own deadline, up to 30 s.
   */
  close(): void {
    this.#refusals.close();
    for (const socket of this.#open) socket.destroy();
    this.#open.clear();
  }

  #noteRefusal(which: string): void {
    this.#refusals.note(
      'cap',
      () =>
        this.#opts.log.warn(`refused a connection on the ${this.#opts.what}: too many connections (${which} cap)`, {
          total: this.#counts.total,
          maxTotal: this.#opts.maxTotal,
          maxPerAddress: this.#opts.maxPerAddress,
        }),
      (refused, seconds) =>
        this.#opts.log.warn(`refused connections on the ${this.#opts.what}: too many connections`, {
          refused,
          inLast: `${seconds}s`,
        }),
    );
  }
}

function peerKey(socket: Duplex): string {
  const s = socket as Duplex & { remoteAddress?: string; remotePort?: number };
  return `${s.remoteAddress}:${s.remotePort}`;
}

/** `server.listen`, resolving with the port it got. */
export function listenOn(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as { port: number }).port);
    });
  });
}

/** Stops `listener` and ends every connection of `http` (the same server, or the one it feeds). */
export function closeServers(listener: Server, http: Server & { closeAllConnections(): void }): Promise<void> {
  return new Promise((resolve) => {
    let pending = listener === http ? 1 : 2;
    const done = () => {
      if (--pending === 0) resolve();
    };
    listener.close(done);
    if (listener !== http) http.close(done);
    http.closeAllConnections();
  });
}
