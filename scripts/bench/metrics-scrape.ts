// The proxy's /metrics with many clusters: the real ProxyMetrics filled as a busy proxy would fill it
// (each cluster with an agent session, requests of four verbs and two codes, channel dials), then
// scraped repeatedly. Usage: node metrics-scrape.ts CLUSTERS SCRAPES → prints one JSON line.
import { EventEmitter } from 'node:events';
import { ProxyMetrics } from '../../src/proxy/metrics.ts';
import { SessionRegistry } from '../../src/proxy/registry.ts';
import type { AgentSession } from '../../src/tunnel/server.ts';

const [clusters = '1000', scrapes = '20'] = process.argv.slice(2);
const registry = new SessionRegistry();
const metrics = new ProxyMetrics({
  registry,
  clusters: () => Array.from({ length: Number(clusters) }, (_, i) => `cluster-${i}`),
  leader: () => 1,
  replicas: () => 1,
  draining: () => false,
  stalledBytes: () => 0,
});
for (let i = 0; i < Number(clusters); i++) {
  const name = `cluster-${i}`;
  const session = Object.assign(new EventEmitter(), {
    name,
    closed: false,
    channels: 3,
    bytes: { read: 1e6 + i, written: 2e6 + i },
  }) as unknown as AgentSession;
  registry.add(session);
  for (const verb of ['get', 'list', 'watch', 'create']) {
    for (const code of ['200', '404']) {
      metrics.requests.inc({ cluster: name, verb, code });
      if (verb !== 'watch') metrics.requestDuration.observe({ cluster: name }, 0.004);
    }
  }
  metrics.onChannel(session, 2);
}
await metrics.metrics();
const times: number[] = [];
let bytes = 0;
for (let n = 0; n < Number(scrapes); n++) {
  const t = performance.now();
  bytes = (await metrics.metrics()).length;
  times.push(performance.now() - t);
}
times.sort((a, b) => a - b);
console.log(
  JSON.stringify({
    clusters: Number(clusters),
    p50ms: times[Math.floor(times.length / 2)],
    maxms: times.at(-1),
    bytes,
  }),
);
