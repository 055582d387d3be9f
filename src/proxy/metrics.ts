import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { EVENT_LOOP_SAMPLE_MS, withoutTotalGauges } from '../observe/health.ts';
import type { AgentSession, ChannelObserver } from '../tunnel/server.ts';
import type { SessionRegistry } from './registry.ts';
import { registerMallocInUse } from '../observe/malloc-metric.ts';

/** seconds: from a quick apiserver answer through the tunnel up to the default --request-timeout */
const REQUEST_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30];
const DIAL_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5];
/** (fewer buckets than client-go's: a proxy with 1 000 clusters has a series per cluster and verb) */

export type HandshakeResult = 'accepted' | 'unauthorized' | 'failed' | 'limited' | 'unavailable' | 'held';
export type LoginFailure = 'unknown_cluster' | 'wrong_token' | 'unusable_record';

/** What the proxy's metrics read at scrape time, rather than count on every request. */
export interface ProxyMetricsSource {
  registry: SessionRegistry;
  /** the clusters this proxy serves, connected or not */
  clusters: () => Iterable<string>;
  /** 1 when this replica writes the Clusters (or there is no election), else 0 */
  leader: () => number;
  replicas: () => number;
  draining: () => boolean;
  /** bytes reserved now by answers whose clients stopped reading */
  stalledBytes: () => number;
}

/**
 * `tower_proxy_*` in Prometheus text format, with prom-client's process and Node.js metrics.
 * Gauges and byte counters are read from the live sessions when scraped; only requests, dials,
 * handshakes and errors are counted as they happen.
 */
export class ProxyMetrics {
  readonly register = new Registry();
  readonly handshakes: Counter<'result'>;
  readonly loginFailures: Counter<'reason'>;
  readonly requests: Counter<'cluster' | 'verb' | 'code'>;
  readonly requestDuration: Histogram<'cluster'>;
  readonly dialDuration: Histogram<'cluster'>;
  readonly dialFailures: Counter<'cluster' | 'reason'>;
  readonly reconcileErrors: Counter;
  readonly inflightRefusals: Counter<'cluster'>;
  readonly stalledRefusals: Counter<'cluster'>;
  readonly peerForwards: Counter<'replica'>;
  /** bytes of sessions that have closed, by cluster; live ones are read at scrape time */
  #closedBytes = new Map<string, { read: number; written: number }>();

  constructor(source: ProxyMetricsSource) {
    const registers = [this.register];
    collectDefaultMetrics({ register: this.register, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    registerMallocInUse(this.register);
    withoutTotalGauges(this.register);
    const { registry } = source;
    // every served cluster has both series, 0 agents too: an alert on "== 0" needs the series to exist
    new Gauge({
      name: 'tower_proxy_agents_connected',
      help: 'Agent sessions connected, by cluster (0 for a served cluster without one)',
      labelNames: ['cluster'],
      registers,
      collect() {
        this.reset();
        for (const cluster of source.clusters()) this.set({ cluster }, 0);
        for (const [cluster, n] of registry.counts()) this.set({ cluster }, n);
      },
    });
    new Gauge({
      name: 'tower_proxy_cluster_info',
      help: 'A served cluster (1), to join other series on by cluster',
      labelNames: ['cluster'],
      registers,
      collect() {
        this.reset();
        for (const cluster of source.clusters()) this.set({ cluster }, 1);
      },
    });
    new Gauge({
      name: 'tower_proxy_channels_open',
      help: 'Tunnel channels open through all agents',
      registers,
      collect() {
        let n = 0;
        for (const s of registry.sessions()) n += s.channels;
        this.set(n);
      },
    });
    const closed = this.#closedBytes;
    new Counter({
      name: 'tower_proxy_tunnel_bytes_total',
      help: 'Bytes through agent connections (WebSocket, TLS included), by cluster and direction',
      labelNames: ['cluster', 'direction'],
      registers,
      collect() {
        const sums = new Map<string, { read: number; written: number }>();
        for (const [cluster, b] of closed) sums.set(cluster, { ...b });
        for (const s of registry.sessions()) {
          const b = s.bytes;
          const sum = sums.get(s.name) ?? { read: 0, written: 0 };
          sum.read += b.read;
          sum.written += b.written;
          sums.set(s.name, sum);
        }
        this.reset();
        for (const [cluster, b] of sums) {
          this.inc({ cluster, direction: 'from_agent' }, b.read);
          this.inc({ cluster, direction: 'to_agent' }, b.written);
        }
      },
    });
    new Gauge({
      name: 'tower_proxy_leader',
      help:
        '1 when this replica writes the Clusters (it holds Lease kubesphere-system/tower, or runs without ' +
        'leader election); every replica serves either way',
      registers,
      collect() {
        this.set(source.leader());
      },
    });
    new Gauge({
      name: 'tower_proxy_replicas',
      help: 'Live proxy replicas this one knows of, itself included (draining ones too)',
      registers,
      collect() {
        this.set(source.replicas());
      },
    });
    new Gauge({
      name: 'tower_proxy_stalled_memory_bytes',
      help:
        'Memory reserved by answers whose clients stopped reading: each holds up to its SSH window and buffers ' +
        'while stalled; at --max-stalled-memory new requests are answered 429',
      registers,
      collect() {
        this.set(source.stalledBytes());
      },
    });
    new Gauge({
      name: 'tower_proxy_draining',
      help: '1 while this replica drains (SIGTERM): not ready, finishing what is in flight',
      registers,
      collect() {
        this.set(source.draining() ? 1 : 0);
      },
    });
    this.handshakes = new Counter({
      name: 'tower_proxy_agent_handshakes_total',
      help:
        'Agent connections by outcome: accepted, unauthorized (token or cluster refused), failed (protocol, ' +
        'config, timeout), limited (too many at once), unavailable (this replica starts or drains), held (the agent ' +
        'holds a session here already: answered 409 before any handshake)',
      labelNames: ['result'],
      registers,
    });
    this.loginFailures = new Counter({
      name: 'tower_proxy_login_failures_total',
      help: 'Agents refused by reason',
      labelNames: ['reason'],
      registers,
    });
    this.requests = new Counter({
      name: 'tower_proxy_gateway_requests_total',
      help:
        'Requests through the gateway and the cluster ports, by cluster (empty when none was routed), ' +
        'Kubernetes verb and status code',
      labelNames: ['cluster', 'verb', 'code'],
      registers,
    });
    // by cluster only, and without watches: a latency to alert on, and one series set per cluster
    this.requestDuration = new Histogram({
      name: 'tower_proxy_gateway_request_duration_seconds',
      help: 'Time until a gateway request is done (an upgrade: until answered); watches are not observed',
      labelNames: ['cluster'],
      buckets: REQUEST_BUCKETS,
      registers,
    });
    this.dialDuration = new Histogram({
      name: 'tower_proxy_upstream_dial_duration_seconds',
      help: 'Time for an agent to open a channel, which it does once it has dialed the upstream',
      labelNames: ['cluster'],
      buckets: DIAL_BUCKETS,
      registers,
    });
    this.dialFailures = new Counter({
      name: 'tower_proxy_upstream_dial_failures_total',
      help: 'Channels not opened, by cluster and reason (refused: the agent could not dial the upstream or would not)',
      labelNames: ['cluster', 'reason'],
      registers,
    });
    this.reconcileErrors = new Counter({
      name: 'tower_proxy_reconcile_errors_total',
      help: 'Failed reconciles of Cluster resources (Kubernetes mode)',
      registers,
    });
    this.peerForwards = new Counter({
      name: 'tower_proxy_peer_forwards_total',
      help:
        'Requests this replica forwarded to another one, which holds an agent of the cluster when this one does ' +
        'not (they are counted in tower_proxy_gateway_requests_total on both)',
      labelNames: ['replica'],
      registers,
    });
    this.inflightRefusals = new Counter({
      name: 'tower_proxy_inflight_refusals_total',
      help: 'Requests answered 429 because the cluster had --max-requests-inflight requests in flight',
      labelNames: ['cluster'],
      registers,
    });
    this.stalledRefusals = new Counter({
      name: 'tower_proxy_stalled_refusals_total',
      help:
        'Requests and upgrades answered 429 because answers whose clients stopped reading held ' +
        '--max-stalled-memory',
      labelNames: ['cluster'],
      registers,
    });
  }

  /** for the tunnel: every channel open, its time or its failure */
  readonly onChannel: ChannelObserver = (session, ms, failure) => {
    if (failure) this.dialFailures.inc({ cluster: session.name, reason: failure });
    else this.dialDuration.observe({ cluster: session.name }, ms / 1000);
  };

  /** keeps a closing session's bytes in its cluster's total */
  sessionClosed(session: AgentSession): void {
    const b = session.bytes;
    const sum = this.#closedBytes.get(session.name) ?? { read: 0, written: 0 };
    sum.read += b.read;
    sum.written += b.written;
    this.#closedBytes.set(session.name, sum);
  }

  /** a cluster removed from the store takes its series with it */
  async forget(cluster: string): Promise<void> {
    this.#closedBytes.delete(cluster);
    for (const m of [
      this.requests,
      this.requestDuration,
      this.dialDuration,
      this.dialFailures,
      this.inflightRefusals,
      this.stalledRefusals,
    ] as MetricOf[]) {
      // prom-client removes series by their exact labels: list the cluster's (a histogram's without le)
      const seen = new Set<string>();
      for (const { labels } of (await m.get()).values) {
        if (labels.cluster !== cluster) continue;
        const { le: _bucket, ...series } = labels;
        const key = JSON.stringify(series);
        if (seen.has(key)) continue;
        seen.add(key);
        m.remove(series);
      }
    }
  }

  metrics(): Promise<string> {
    return this.register.metrics();
  }
  get contentType(): string {
    return this.register.contentType;
  }
}

type MetricOf = {
  get(): Promise<{ values: { labels: Record<string, string | number> }[] }>;
  remove(labels: Record<string, string | number>): void;
};
