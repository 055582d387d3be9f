import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import {
  cachedMetrics,
  EVENT_LOOP_SAMPLE_MS,
  serveHealth,
  withoutTotalGauges,
  type HealthOptions,
} from '../observe/health.ts';
import type { TowerAgent } from './agent.ts';
import { registerMallocInUse } from '../observe/malloc-metric.ts';

const DIAL_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 10];

/**
 * The agent's `--health-port`: /livez, /readyz (ready while connected to a proxy) and /metrics
 * (`tower_agent_*` and prom-client's process and Node.js metrics). Loaded only with the flag, so
 * that an agent without it carries no metrics library.
 */
export class AgentHealth {
  readonly register = new Registry();
  readonly dial: (seconds: number, failed: boolean) => void;
  #server: Server | undefined;
  #agent: TowerAgent | undefined;

  constructor() {
    const registers = [this.register];
    collectDefaultMetrics({ register: this.register, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    registerMallocInUse(this.register);
    withoutTotalGauges(this.register);
    const stats = () => this.#agent?.stats;
    new Gauge({
      name: 'tower_agent_connected',
      help: '1 while the agent holds a session with the proxy',
      registers,
      collect() {
        this.set(stats()?.connected ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tower_agent_sessions',
      help: 'Sessions held: one per proxy replica',
      registers,
      collect() {
        this.set(stats()?.sessions ?? 0);
      },
    });
    new Gauge({
      name: 'tower_agent_known_replicas',
      help: 'Proxy replicas the proxy says live (1 for a proxy that names none)',
      registers,
      collect() {
        this.set(stats()?.replicas ?? 0);
      },
    });
    new Counter({
      name: 'tower_agent_reconnects_total',
      help: 'Sessions that ended and were dialed again',
      registers,
      collect() {
        this.reset();
        this.inc(stats()?.reconnects ?? 0);
      },
    });
    new Counter({
      name: 'tower_agent_connection_failures_total',
      help: 'Failed attempts to connect to the proxy',
      registers,
      collect() {
        this.reset();
        this.inc(stats()?.failures ?? 0);
      },
    });
    new Counter({
      name: 'tower_agent_channel_violations_total',
      help:
        'Channels closed because the proxy or the member broke HTTP/1.1 on them ' +
        '(a request before the previous answer ended, ambiguous framing)',
      registers,
      collect() {
        this.reset();
        this.inc(stats()?.violations ?? 0);
      },
    });
    new Counter({
      name: 'tower_agent_recordings_total',
      help:
        'Exec and attach sessions with --record-exec, by result: recorded; failed (its recording failed midway: ' +
        'ended, or went on unrecorded with --record-failure open); refused (its recording could not start); ' +
        'unrecorded (could not start, went on: --record-failure open)',
      labelNames: ['result'],
      registers,
      collect() {
        const r = stats()?.recordings;
        this.reset();
        if (!r) return;
        for (const result of ['recorded', 'failed', 'refused', 'unrecorded'] as const) this.inc({ result }, r[result]);
      },
    });
    new Gauge({
      name: 'tower_agent_recordings_bytes',
      help: 'What the files in the --record-exec directory hold, as the agent counts them (its --record-max-bytes)',
      registers,
      collect() {
        this.set(stats()?.recordings?.bytes ?? 0);
      },
    });
    const agent = () => this.#agent;
    new Gauge({
      name: 'tower_agent_stalled_memory_bytes',
      help:
        'Memory reserved by answers the tunnel cannot take (their clients stopped reading; the member ' +
        'connection paused); at --max-stalled-memory requests are answered 429 here',
      registers,
      collect() {
        this.set(stats()?.stalledBytes ?? 0);
      },
    });
    new Counter({
      name: 'tower_agent_stalled_refusals_total',
      help:
        'Requests answered 429 here (or channels refused) because answers the tunnel cannot take ' +
        'held --max-stalled-memory',
      registers,
      collect() {
        this.reset();
        this.inc(stats()?.stalledRefusals ?? 0);
      },
    });
    new Gauge({
      name: 'tower_agent_channels_open',
      help: 'Channels the proxy holds open through this agent',
      registers,
      collect() {
        this.set(agent()?.channels ?? 0);
      },
    });
    new Counter({
      name: 'tower_agent_tunnel_bytes_total',
      help: 'Bytes through the connection to the proxy (WebSocket, TLS included), by direction',
      labelNames: ['direction'],
      registers,
      collect() {
        const s = stats();
        this.reset();
        this.inc({ direction: 'from_proxy' }, s?.bytesRead ?? 0);
        this.inc({ direction: 'to_proxy' }, s?.bytesWritten ?? 0);
      },
    });
    new Counter({
      name: 'tower_agent_policy_requests_total',
      help:
        'Requests the member policy judged, by decision (allowed, refused); only with --policy or ' +
        '--policy-configmap',
      labelNames: ['decision'],
      registers,
      collect() {
        const p = stats()?.policy;
        this.reset();
        if (!p) return;
        let refused = 0;
        for (const n of p.refused.values()) refused += n;
        this.inc({ decision: 'allowed' }, p.allowed);
        this.inc({ decision: 'refused' }, refused);
      },
    });
    new Counter({
      name: 'tower_agent_policy_refusals_total',
      help:
        'Requests the member policy refused, by the rule that refused them, or (default), (unjudgeable), ' +
        '(unavailable) or (kubesphere)',
      labelNames: ['rule'],
      registers,
      collect() {
        const p = stats()?.policy;
        this.reset();
        for (const [rule, n] of p?.refused ?? []) this.inc({ rule }, n);
      },
    });
    new Gauge({
      name: 'tower_agent_policy_ok',
      help:
        'With a member policy: 1 while it is read and in force, 0 while it cannot be used (every request is ' +
        'refused)',
      registers,
      collect() {
        const p = stats()?.policy;
        if (p) this.set(p.ok ? 1 : 0);
      },
    });
    const duration = new Histogram({
      name: 'tower_agent_upstream_dial_duration_seconds',
      help: 'Time to connect to an upstream (kube-apiserver with its TLS, or ks-apiserver) for a channel',
      labelNames: ['result'],
      buckets: DIAL_BUCKETS,
      registers,
    });
    this.dial = (seconds, failed) => duration.observe({ result: failed ? 'error' : 'ok' }, seconds);
  }

  /** Serves on host:port; resolves with the port it got. */
  listen(agent: TowerAgent, host: string, port: number): Promise<number> {
    this.#agent = agent;
    const health: HealthOptions = {
      live: [{ name: 'ping', check: () => undefined }],
      ready: [
        {
          name: 'proxy-connection',
          check: () => (agent.stats.connected ? undefined : "not connected to the proxy (see the agent's log)"),
        },
      ],
      metrics: cachedMetrics(async () => ({
        contentType: this.register.contentType,
        body: await this.register.metrics(),
      })),
    };
    const server = createServer((req, res) => {
      const handled = serveHealth(req, res, health);
      if (!handled) {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('404 page not found\n');
      }
    });
    server.headersTimeout = 10_000;
    server.requestTimeout = 10_000;
    this.#server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve((server.address() as { port: number }).port));
    });
  }

  close(): void {
    this.#server?.close();
    this.#server?.closeAllConnections();
  }
}
