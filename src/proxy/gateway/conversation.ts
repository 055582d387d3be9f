// The order of answers on one client connection. HTTP/1.1 lets a client write several requests
// before reading any answer (pipelining); Node's server queues the answers in order, but whatever
// tower writes to the socket itself (a 400 for bytes that are not HTTP, an upgrade's refusal or its
// 101) goes straight out, ahead of answers still being made. A Conversation knows
// how many answers are still owed, so that such writes wait their turn, and whether the connection
// has been refused, so that nothing read after the refusal is forwarded.
import type { Duplex } from 'node:stream';
import type { IncomingMessage, ServerResponse } from 'node:http';

export class Conversation {
  /** answers owed on this connection, in the order Node will write them */
  #owed = new Set<ServerResponse>();
  #closesWithSocket = false;
  #whenAnswered: (() => void)[] = [];
  /** the request read last (the only one whose body may still be arriving), and what to do if that body breaks */
  #last: { req: IncomingMessage; bodyBroke: (err: Error) => void } | undefined;
  /** the connection ends with an answer being made: what was read after it is not served */
  #ended = false;

  #socket: Duplex;

  constructor(socket: Duplex) {
    this.#socket = socket;
  }

  /** Counts an answer owed until its response closes. */
  owe(req: IncomingMessage, res: ServerResponse, bodyBroke: (err: Error) => void): void {
    this.#last = { req, bodyBroke };
    this.#owed.add(res);
    res.once('close', () => {
      this.#owed.delete(res);
      if (this.#owed.size > 0) return;
      for (const run of this.#whenAnswered.splice(0)) run();
    });
  }

  /**
   * After an upgrade or CONNECT, Node no longer tells the answers still queued behind the one being
   * written that their connection closed: they would never close, holding their request's place in
   * the in-flight limit and in a drain. They close with the socket here, as Node closes the others.
   */
  closeWithSocket(): void {
    if (this.#closesWithSocket) return;
    this.#closesWithSocket = true;
    this.#socket.once('close', () => {
      for (const res of [...this.#owed]) {
        res.destroy();
        res.emit('close');
      }
    });
  }

  /** Runs `fn` once every answer owed before now has gone (at once when none is). */
  afterAnswers(fn: () => void): void {
    if (this.#owed.size === 0) fn();
    else this.#whenAnswered.push(fn);
  }

  get owed(): number {
    return this.#owed.size;
  }

  /**
   * Bytes that are not HTTP arrived: when they are in the body of the request being read, that
   * request fails with them (true); otherwise they are a request of their own (false).
   */
  bodyBroke(err: Error): boolean {
    const last = this.#last;
    if (!last || last.req.complete || last.req.destroyed) return false;
    last.bodyBroke(err);
    return true;
  }

  /** Ends the conversation with the answer being made: nothing read after it is served. */
  endHere(): void {
    this.#ended = true;
  }

  /** ... and nothing more is read: what follows a refused request is not to be read as anything. */
  refuse(): void {
    this.endHere();
    this.#socket.pause();
  }

  get ended(): boolean {
    return this.#ended;
  }
}

/** The conversation of each client connection, kept as long as its socket. */
export class Conversations {
  #of = new WeakMap<Duplex, Conversation>();

  of(socket: Duplex): Conversation {
    let c = this.#of.get(socket);
    if (!c) {
      c = new Conversation(socket);
      this.#of.set(socket, c);
    }
    return c;
  }
}
