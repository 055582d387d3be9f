/**
 * The last stage for an upgrade (SPDY, WebSocket: exec, attach, port-forward): a connection of its
 * own to the upstream, the member's 101 relayed, then bytes both ways with accounted backpressure.
 * A refused upgrade (403, 400, …) is relayed as it is.
 */
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Refusal } from '../../http/status.ts';
import type { Logger } from '../../observe/log.ts';
import type { ActAs } from '../upstream.ts';
import type { Admission } from './admission.ts';
import { rawHead, validStatusLine } from './headers.ts';
import type { Way } from './members.ts';
import { refusals } from './refusals.ts';
import type { Route } from './route.ts';

export interface UpgraderOptions {
  admission: Admission;
  requestTimeoutMs: number;
  log: Logger;
}

/** How an upgrade ends for the gateway: refused with a Status, or answered with this status code. */
export interface UpgradeOutcome {
  refuse(r: Refusal): void;
  answered(status: number): void;
}

export class Upgrader {
  #opts: UpgraderOptions;
  #log: Logger;
  /** upgraded connections: a drain waits for them (exec, port-forward) until its grace period ends */
  readonly upgraded = new Set<Duplex>();

  constructor(opts: UpgraderOptions) {
    this.#opts = opts;
    this.#log = opts.log;
  }

  upgrade(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    route: Route,
    way: Way,
    actAs: ActAs,
    outcome: UpgradeOutcome,
  ): void {
    if (socket.destroyed) return;
    const member = way.current;
    const { path, cluster } = route;
    const headers = member.headers(req, route, actAs);
    if (this.#log.enabled(4))
      this.#log.debug(4, 'forward upgrade', {
        cluster,
        method: req.method,
        path,
        upgrade: req.headers.upgrade,
        via: member.via,
      });
    headers.connection = 'Upgrade';
    headers.upgrade = req.headers.upgrade;
    const timeoutMs = this.#opts.requestTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    // refuse() ends the socket after the Status: destroying it as well could cut that short
    const fail = (r: Refusal) => {
      clearTimeout(timer);
      outcome.refuse(r);
      if (!socket.writable) socket.destroy();
    };
    // upgraded connections get a channel of their own, never a pooled one
    member.connect().then(
      (tls) => {
        if (socket.destroyed) {
          tls.destroy();
          return;
        }
        let upReq: ClientRequest;
        try {
          upReq = httpRequest({ createConnection: () => tls, method: req.method, path, headers });
        } catch (err) {
          tls.destroy();
          fail(refusals.cannotForward(cluster, err as Error, true));
          return;
        }
        timer =
          timeoutMs > 0
            ? setTimeout(() => {
                upReq.destroy();
                fail(refusals.timedOut(route.target, cluster, timeoutMs));
              }, timeoutMs)
            : undefined;
        // both run inside the tunnel's read of the channel: nothing may throw out of them
        upReq.on('upgrade', (upRes, upSocket, upHead) => {
          clearTimeout(timer);
          if (!validStatusLine(upRes)) {
            upSocket.destroy();
            fail(refusals.badUpgradeAnswer(route.target, cluster));
            return;
          }
          upSocket.on('error', () => socket.destroy());
          this.upgraded.add(socket);
          socket.on('close', () => {
            this.upgraded.delete(socket);
            upSocket.destroy();
          });
          upSocket.on('close', () => socket.destroy());
          socket.write(rawHead(upRes, route.auditId));
          if (upHead.length) socket.write(upHead);
          if (head.length) upSocket.write(head);
          // the member's side by hand, so that a client that stops reading counts as stalled
          const stalled = this.#opts.admission.stallable(upSocket, socket);
          upSocket.on('data', (d: Buffer) => {
            if (!socket.write(d)) stalled();
          });
          upSocket.on('end', () => socket.end());
          upSocket.resume();
          socket.pipe(upSocket);
          outcome.answered(upRes.statusCode ?? 101);
        });
        upReq.on('response', (upRes) => {
          clearTimeout(timer);
          if (!validStatusLine(upRes)) {
            upRes.destroy();
            fail(refusals.badUpgradeAnswer(route.target, cluster));
            return;
          }
          // the upgrade was refused (403, 400, …): relay the answer as it is
          upRes.on('error', () => socket.destroy());
          socket.write(rawHead(upRes, route.auditId, true));
          upRes.pipe(socket);
          outcome.answered(upRes.statusCode ?? 0);
        });
        upReq.on('error', (err) => {
          clearTimeout(timer);
          this.#log.warn('upgrade through the tunnel failed', { cluster, err: err.message });
          if (!socket.destroyed) fail(refusals.upgradeFailed(cluster, err));
        });
        socket.on('close', () => {
          clearTimeout(timer);
          upReq.destroy();
        });
        req.pipe(upReq);
      },
      (err: Error) => fail(refusals.unreachable(route.target, cluster, member.through, err)),
    );
  }
}
