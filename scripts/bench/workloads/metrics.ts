// metrics: the proxy's /metrics with N clusters that each have an agent, requests and dials
// (scripts/bench/metrics-scrape.ts fills the real ProxyMetrics and scrapes it).
import { run } from '../../../test/support/tower.ts';
import { benchScript, type Workload } from '../context.ts';
import { fmt } from '../format.ts';

const SCRAPES = 20;
const SCRAPE_TIMEOUT_MS = 10 * 60_000;

export interface MetricsResult {
  clusters: number;
  p50ms: number;
  maxms: number;
  bytes: number;
}

export const metrics: Workload<MetricsResult> = {
  name: 'metrics',
  async run(bench) {
    const args = [benchScript('metrics-scrape.ts'), String(bench.flags.agents), String(SCRAPES)];
    const r = await run(process.execPath, args, { timeoutMs: SCRAPE_TIMEOUT_MS });
    if (r.code !== 0) throw new Error(`metrics-scrape failed: ${r.stderr}`);
    const m = JSON.parse(r.stdout) as MetricsResult;
    bench.log(`/metrics with ${m.clusters} clusters: ${m.p50ms.toFixed(0)} ms, ${(m.bytes / 2 ** 20).toFixed(1)} MiB`);
    return m;
  },
  table(metrics) {
    return [
      `| /metrics (tower only, ${metrics.clusters} clusters with agents and requests) | value |`,
      '| --- | ---: |',
      `| scrape, p50 ms | ${fmt(metrics.p50ms)} |`,
      `| scrape, max of ${SCRAPES}, ms | ${fmt(metrics.maxms)} |`,
      `| size, MiB | ${fmt(metrics.bytes / 2 ** 20)} |`,
    ];
  },
};
