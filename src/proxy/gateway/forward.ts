/**
 * The last stage for a request: it goes to its upstream, and the answer comes back. A request
 * without a body that fails before any answer is retried through the next upstream of its way, with
 * that upstream's own headers: a safe one (GET, HEAD, OPTIONS) whenever, another only when it never
 * left for the member (its channel was refused), as Go's http.Transport does. One that failed on a
 * kept-alive connection the member closed as it went out (its idle timeout crossing the request) goes
 * again on the same upstream, by the same rule. Whatever the member
 * answers, this request alone fails: 502 for a broken answer, 504 for none.
 */
import { request as httpRequest, type ClientRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { sendStatus } from '../../http/status.ts';
import type { Logger } from '../../observe/log.ts';
import type { ActAs } from '../upstream.ts';
import type { Admission } from './admission.ts';
import type { Body } from './framing.ts';
import { downstreamHeaders } from './headers.ts';
import type { Way } from './members.ts';
import { refusals } from './refusals.ts';
import type { Route } from './route.ts';
import { WatchFrames } from './watch-frames.ts';

/** upstreams tried for one request without a body before the gateway answers 502 */
const MAX_ATTEMPTS = 3;
/** fresh connections of one upstream tried after a kept-alive one failed under a request */
const MAX_STALE_RETRIES = 2;
/** requests that may reach the member twice (RFC 9110 §9.2.1): the others are retried only if none was sent */
const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

export interface ForwarderOptions {
  admission: Admission;
  /** until the member's response headers; a watch or stream is not limited once they arrive */
  requestTimeoutMs: number;
  log: Logger;
}

export class Forwarder {
  #opts: ForwarderOptions;
  #log: Logger;
  /** requests whose bodies turned out not to be HTTP, and how to cut off what was forwarded of each */
  #brokenBodies = new WeakSet<IncomingMessage>();
  #cutOff = new WeakMap<IncomingMessage, () => void>();
  /** hands each open watch back at its next event boundary */
  readonly watches = new Set<() => void>();

  constructor(opts: ForwarderOptions) {
    this.#opts = opts;
    this.#log = opts.log;
  }

  /** The client's body turned out not to be HTTP (a bad chunk): what was forwarded of it is cut off. */
  bodyBroke(req: IncomingMessage): void {
    this.#brokenBodies.add(req);
    this.#cutOff.get(req)?.();
  }

  /** Sends the request through `way.current`, and the next upstream of `way` on a retry. */
  forward(
    req: IncomingMessage,
    res: ServerResponse,
    route: Route,
    way: Way,
    actAs: ActAs,
    body: Body,
    verb: string,
    staleRetries = 0,
  ): void {
    // the client's body broke while a member was being chosen (it has had its answer), or the client
    // left meanwhile (an impersonation asked of the member takes a round trip): nothing goes on
    if (this.#brokenBodies.has(req) || res.destroyed) return;
    const { path, cluster } = route;
    const member = way.current;
    const headers = member.headers(req, route, actAs);
    const bodyless = body.kind === 'none';
    // tower frames what it forwards, whatever the method: Node's client writes a GET's, DELETE's or
    // OPTIONS' body unframed unless told, and the member would read it as the next request
    if (body.kind === 'length') headers['content-length'] = String(body.bytes);
    else if (body.kind === 'chunked') headers['transfer-encoding'] = 'chunked';
    // the fields object is built only when someone reads it: this runs for every request
    if (this.#log.enabled(4)) this.#log.debug(4, 'forward', { cluster, method: req.method, path, via: member.via });
    let upstream: ClientRequest;
    try {
      // the body piped in is exactly what its framing says: Node's parser delivered it so
      upstream = httpRequest({ agent: member.pool, method: req.method, path, headers });
    } catch (err) {
      sendStatus(res, refusals.cannotForward(cluster, err as Error), route.auditId);
      req.resume();
      return;
    }
    let answered = false;
    let timedOut = false;
    // handed to a channel: the member may have it, and only a safe request may then go again
    let written = false;
    upstream.once('finish', () => {
      written = true;
    });
    const timeoutMs = this.#opts.requestTimeoutMs;
    const timer =
      timeoutMs > 0
        ? setTimeout(() => {
            timedOut = true;
            upstream.destroy();
          }, timeoutMs)
        : undefined;
    upstream.on('response', (up) => {
      answered = true;
      clearTimeout(timer);
      // this runs inside the tunnel's read of the channel: nothing may throw out of it
      try {
        this.#relay(up, res, upstream, route, verb);
      } catch (err) {
        this.#log.warn('cannot relay an answer', { cluster, err: (err as Error).message });
        up.destroy();
        upstream.destroy();
        res.destroy();
      }
    });
    upstream.on('error', (err) => {
      clearTimeout(timer);
      // the client's body broke: it has had its answer (in the gateway)
      if (this.#brokenBodies.has(req)) return;
      if (answered || res.headersSent) {
        if (!res.writableEnded) res.destroy();
        return;
      }
      if (timedOut) {
        sendStatus(res, refusals.timedOut(route.target, cluster, timeoutMs), route.auditId);
        return;
      }
      const failed = () =>
        sendStatus(res, refusals.unreachable(route.target, cluster, member.through, err), route.auditId);
      if (!bodyless || (written && !SAFE.has(req.method ?? '')) || res.destroyed) {
        failed();
        return;
      }
      // a kept-alive connection, closed by the member as the request went out: a fresh one may serve it
      if (upstream.reusedSocket && staleRetries < MAX_STALE_RETRIES) {
        this.#log.debug(1, 'a kept-alive connection failed under a request; sending it on a fresh one', {
          cluster,
          via: member.via,
          err: err.message,
        });
        this.forward(req, res, route, way, actAs, body, verb, staleRetries + 1);
        return;
      }
      if (way.tried >= MAX_ATTEMPTS) {
        failed();
        return;
      }
      way.next().then((next) => {
        if (!next) {
          failed();
          return;
        }
        this.#log.debug(1, 'retrying a request', { cluster, via: member.via, next: next.via, err: err.message });
        this.forward(req, res, route, way, actAs, body, verb, staleRetries);
      }, failed);
    });
    res.on('close', () => {
      clearTimeout(timer);
      if (!res.writableFinished) upstream.destroy();
    });
    if (bodyless) {
      req.resume();
      upstream.end();
    } else {
      req.on('error', () => upstream.destroy());
      this.#cutOff.set(req, () => {
        req.unpipe(upstream);
        upstream.destroy();
      });
      req.pipe(upstream);
    }
  }

  /** The member's answer to the client, or a 502 when its head cannot be relayed as it is. */
  #relay(up: IncomingMessage, res: ServerResponse, upstream: ClientRequest, route: Route, verb: string): void {
    const code = up.statusCode ?? 0;
    let problem = code >= 200 && code <= 599 ? undefined : `an invalid status code ${code}`;
    if (!problem) {
      try {
        res.writeHead(code, up.statusMessage, downstreamHeaders(up, route.auditId));
      } catch (err) {
        problem = `a response head that cannot be relayed (${(err as Error).message})`;
      }
    }
    if (problem) {
      up.destroy();
      upstream.destroy();
      sendStatus(res, refusals.badAnswer(route.target, route.cluster, problem), route.auditId);
      return;
    }
    // a streamed answer (a watch) must reach the client before its first event; one with a
    // length leaves with its body, in one record
    if (up.headers['content-length'] === undefined) res.flushHeaders();
    // relayed by hand, not piped (nor pipeline: its promise costs an AbortController per request), so
    // that an answer whose client stops reading counts as stalled while it holds the tunnel's window
    up.on('error', () => res.destroy());
    let handedBack = false;
    // an answer cut off mid-body is cut off for the client too, never ended as if whole
    up.on('close', () => {
      if (!up.complete && !handedBack) res.destroy();
    });
    const stalled = this.#opts.admission.stallable(up, res);
    if (verb !== 'watch') {
      up.on('data', (d: Buffer) => {
        if (!res.write(d)) stalled();
      });
      up.on('end', () => res.end());
      return;
    }
    // a watch is relayed event by event, so that a drain can end it where an event ends
    const frames = new WatchFrames(String(up.headers['content-type'] ?? ''));
    let ending = false;
    const end = () => {
      handedBack = true;
      this.watches.delete(handBack);
      res.end();
      up.destroy();
      upstream.destroy();
    };
    const handBack = () => {
      ending = true;
      if (frames.atBoundary) end();
    };
    this.watches.add(handBack);
    res.once('close', () => this.watches.delete(handBack));
    up.on('data', (d: Buffer) => {
      if (handedBack) return;
      const cut = frames.feed(d);
      if (ending && cut >= 0) {
        res.write(d.subarray(0, cut));
        end();
        return;
      }
      if (!res.write(d)) stalled();
    });
    up.on('end', () => {
      if (!handedBack) res.end();
    });
  }
}
