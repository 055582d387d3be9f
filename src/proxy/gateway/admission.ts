/**
 * Admission: whether the proxy takes on one more request for a cluster. Requests in flight per
 * cluster (as kube-apiserver's --max-requests-inflight), and the memory that answers whose clients
 * stopped reading hold (--max-stalled-memory), are shared by every gateway of the proxy.
 */
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import type { Refusal } from '../../http/status.ts';
import type { StallBudget } from '../../tunnel/stall-budget.ts';
import type { ProxyMetrics } from '../metrics.ts';
import { isLongRunning } from './framing.ts';
import { refusals } from './refusals.ts';
import type { Route } from './route.ts';

export const DEFAULT_MAX_REQUESTS_INFLIGHT = 1_000;

/** Requests in flight per cluster, across the gateway and the cluster's own ports. */
export class InflightRequests {
  #byCluster = new Map<string, number>();
  /** false when `cluster` already has `max` */
  acquire(cluster: string, max: number): boolean {
    const n = this.#byCluster.get(cluster) ?? 0;
    if (n >= max) return false;
    this.#byCluster.set(cluster, n + 1);
    return true;
  }
  release(cluster: string): void {
    const n = (this.#byCluster.get(cluster) ?? 1) - 1;
    if (n <= 0) this.#byCluster.delete(cluster);
    else this.#byCluster.set(cluster, n);
  }
}

export interface AdmissionOptions {
  inflight?: InflightRequests;
  maxRequestsInflight?: number;
  stalled?: StallBudget;
  metrics?: ProxyMetrics;
}

export class Admission {
  #opts: AdmissionOptions;
  constructor(opts: AdmissionOptions) {
    this.#opts = opts;
  }

  /**
   * Counts a request against its cluster's in-flight limit until `res` closes; a refusal when the
   * cluster is at it, or when stalled answers hold --max-stalled-memory. Watches are not counted.
   */
  admit(res: ServerResponse, route: Route, verb: string): Refusal | undefined {
    const stalled = this.stalled(route.cluster);
    if (stalled) return stalled;
    const max = this.#opts.maxRequestsInflight ?? DEFAULT_MAX_REQUESTS_INFLIGHT;
    const inflight = this.#opts.inflight;
    if (!inflight || isLongRunning(verb, route.path)) return undefined;
    if (!inflight.acquire(route.cluster, max)) {
      this.#opts.metrics?.inflightRefusals.inc({ cluster: route.cluster });
      return refusals.inflightFull(route.cluster, max);
    }
    res.once('close', () => inflight.release(route.cluster));
    return undefined;
  }

  /**
   * A 429 while answers whose clients stopped reading hold the proxy's --max-stalled-memory (requests and upgrades
   * alike).
   */
  stalled(cluster: string): Refusal | undefined {
    const budget = this.#opts.stalled;
    if (!budget?.exhausted) return undefined;
    this.#opts.metrics?.stalledRefusals.inc({ cluster });
    return refusals.stalledFull(budget.reservedBytes, budget.maxBytes);
  }

  /**
   * Backpressure from `to` to `from` that is accounted for: `from` pauses while `to` is full, and
   * the stream reserves what it then holds against --max-stalled-memory until `to` drains or
   * closes. Returns what to call when a write to `to` returned false.
   */
  stallable(from: IncomingMessage | Duplex, to: ServerResponse | Duplex): () => void {
    const stall = this.#opts.stalled?.stream();
    to.on('drain', () => {
      stall?.release();
      from.resume();
    });
    to.once('close', () => stall?.end());
    return () => {
      from.pause();
      stall?.hold();
    };
  }
}
