// stalled: clients that send a GET for a download larger than anything will ever read, then stop
// reading it (as a kubectl whose terminal or pipe stopped, or a dead client behind a NAT that still
// holds the connection; scripts/bench/stalled-clients.ts). Measures what a fresh proxy and agent hold
// for them: idle, with 24, with 200 (24 + 176 more), the same 200 after a malloc-trim check
// (src/observe/memory.ts, every 30 s), and once the clients have gone (what a stalled download leaves
// behind: memory and channels).
import type { TowerProcess } from '../../../test/support/tower.ts';
import { freePort } from '../../../test/support/tower.ts';
import { benchScript, type Bench, type Workload } from '../context.ts';
import { fmt } from '../format.ts';
import { resetPeak, sleep, statusMiB } from '../proc.ts';
import { Tunnel } from '../tunnel.ts';

/** far more than any stalled client reads: the upstream never runs out */
const DOWNLOAD_BYTES = 100e9;
/** the warm-up download, read whole */
const WARM_BYTES = 16 * 2 ** 20;
const WARM_LIMIT_MS = 60_000;
/** stalled downloads at the first and the second step */
export const STALLED_STEPS = [24, 200] as const;
/** after load: longer than one of the relays' 30 s malloc-trim checks (src/observe/memory.ts) */
const TRIM_WAIT_MS = 35_000;
/** bytes through the tunnel and both RSS unchanged for this long: the buffers are full */
const SETTLE_QUIET_MS = 1500;
const SETTLE_LIMIT_MS = 120_000;
const SETTLE_POLL_MS = 250;

/** one process's memory at one point: MiB */
export interface ProcessMemory {
  rss: number;
  /** VmHWM since the step began (peaks are reset before each step) */
  peak: number;
  /** V8 heap in use and external memory (Buffers and other memory V8 is told of), from /metrics */
  heap: number;
  external: number;
  /** channels open, as the process counts them (tower_proxy_channels_open, tower_agent_channels_open) */
  channels: number;
}
export interface StalledPoint {
  label: string;
  streams: number;
  ok: number;
  codes: Record<string, number>;
  settleSeconds: number;
  proxy: ProcessMemory;
  agent: ProcessMemory;
}
export interface StalledResult {
  points: StalledPoint[];
  agentArgs: string[];
}

async function scrape(url: string): Promise<string> {
  const r = await fetch(url);
  return r.text();
}
function metric(text: string, name: string): number {
  let sum = 0;
  let seen = false;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'gm'))) {
    sum += Number(m[1]);
    seen = true;
  }
  return seen ? sum : NaN;
}

async function memory(pid: number, metricsUrl: string, channelsMetric: string): Promise<ProcessMemory> {
  const text = await scrape(metricsUrl).catch(() => '');
  const [rss, peak] = statusMiB(pid, ['VmRSS', 'VmHWM']) as [number, number];
  return {
    rss,
    peak,
    heap: metric(text, 'nodejs_heap_size_used_bytes') / 2 ** 20,
    external: metric(text, 'nodejs_external_memory_bytes') / 2 ** 20,
    channels: metric(text, channelsMetric),
  };
}

/**
 * A fresh proxy and agent (their own data dir, the bench's upstream), so that what earlier workloads
 * left in their heaps does not count; the agent serves /metrics on --health-port.
 */
async function setup(bench: Bench) {
  const healthPort = await freePort();
  const t = await Tunnel.start(bench, 'stalled', ['--health-port', String(healthPort), '--health-host', '127.0.0.1']);
  return {
    tunnel: t,
    proxyMetrics: `http://127.0.0.1:${t.agentPort}/metrics`,
    agentMetrics: `http://127.0.0.1:${healthPort}/metrics`,
  };
}

async function stalledRun(bench: Bench): Promise<StalledResult> {
  const { tunnel, proxyMetrics, agentMetrics } = await setup(bench);
  const pids = [tunnel.proxy.pid, tunnel.agent.pid] as const;
  const ep = tunnel.endpoint;
  const clients: TowerProcess[] = [];
  const client = (mode: 'clients' | 'fetch', path: string, n?: number) => {
    const args = [benchScript('stalled-clients.ts'), mode, ep.host, String(ep.port), ep.ca, ep.cert, ep.key];
    args.push(`${ep.prefix}${path}`, ...(n === undefined ? [] : [String(n)]));
    return bench.spawn(`stalled ${mode}`, process.execPath, args);
  };
  const open = (n: number) => clients.push(client('clients', `/bulk?bytes=${DOWNLOAD_BYTES}`, n));
  /** what the clients said: answers in all, and by status */
  const answers = async (): Promise<{ ok: number; codes: Record<string, number> }> => {
    const codes: Record<string, number> = {};
    let ok = 0;
    for (const c of clients) {
      const m = await c.waitFor(/^(\{"answered".*\})$/m, SETTLE_LIMIT_MS);
      const a = JSON.parse(m[1]!) as { ok: number; codes: Record<string, number> };
      ok += a.ok;
      for (const [k, v] of Object.entries(a.codes)) codes[k] = (codes[k] ?? 0) + v;
    }
    return { ok, codes };
  };
  /** until the buffers are full: bytes through the agent connection and both RSS stop moving */
  const settle = async (): Promise<number> => {
    const t0 = Date.now();
    let last = '';
    let quietSince = Date.now();
    while (Date.now() - t0 < SETTLE_LIMIT_MS) {
      await sleep(SETTLE_POLL_MS);
      const bytes = metric(await scrape(proxyMetrics).catch(() => ''), 'tower_proxy_tunnel_bytes_total');
      const now = JSON.stringify([bytes, ...pids.map((p) => Math.round(statusMiB(p, ['VmRSS'])[0]!))]);
      if (now !== last) {
        last = now;
        quietSince = Date.now();
        continue;
      }
      if (Date.now() - quietSince >= SETTLE_QUIET_MS) break;
    }
    return (Date.now() - t0) / 1000;
  };
  const points: StalledPoint[] = [];
  const point = async (
    label: string,
    streams: number,
    settleSeconds: number,
    a = { ok: 0, codes: {} as Record<string, number> },
  ) => {
    const [proxy, agent] = await Promise.all([
      memory(pids[0], proxyMetrics, 'tower_proxy_channels_open'),
      memory(pids[1], agentMetrics, 'tower_agent_channels_open'),
    ]);
    points.push({ label, streams, ok: a.ok, codes: a.codes, settleSeconds, proxy, agent });
    bench.log(
      `stalled: ${label}: proxy RSS ${proxy.rss.toFixed(0)} MiB (peak ${proxy.peak.toFixed(0)}), ` +
        `agent ${agent.rss.toFixed(0)} MiB (peak ${agent.peak.toFixed(0)})` +
        (streams ? `, ${a.ok} of ${streams} answered 200` : ''),
    );
  };
  // warm: a whole download through, so that code, pools and TLS contexts exist; then past a malloc-trim
  // check, or the idle figure would still hold what that download freed
  await client('fetch', `/bulk?bytes=${WARM_BYTES}`).waitFor(/^\{"bytes"/m, WARM_LIMIT_MS);
  await sleep(TRIM_WAIT_MS);
  await point('idle (after one 16 MiB download)', 0, await settle());
  let streams = 0;
  for (const n of STALLED_STEPS) {
    for (const p of pids) resetPeak(p);
    open(n - streams);
    streams = n;
    const a = await answers();
    await point(`${n} stalled downloads`, n, await settle(), a);
    // what stays: past a malloc-trim check, the pages the burst freed are handed back
    for (const p of pids) resetPeak(p);
    await sleep(TRIM_WAIT_MS);
    await point(`${n} stalled, ${TRIM_WAIT_MS / 1000} s later (past a malloc-trim check)`, n, await settle(), a);
  }
  for (const p of pids) resetPeak(p);
  for (const c of clients) c.child.kill('SIGKILL');
  await sleep(TRIM_WAIT_MS);
  await point(`the ${streams} clients gone, ${TRIM_WAIT_MS / 1000} s later`, 0, await settle());
  await Promise.all([tunnel.proxy.stop('SIGTERM'), tunnel.agent.stop('SIGTERM')]);
  await bench.dispose(tunnel.stack);
  return { points, agentArgs: bench.flags.agentArgs };
}

function stalledTable(r: StalledResult): string[] {
  const idle = r.points[0]!;
  const agent = r.agentArgs.length ? `, agent ${r.agentArgs.join(' ')}` : '';
  const lines = [
    `| stalled downloads (tower only; fresh proxy and agent${agent}) | answered 200 | ` +
      'proxy RSS MiB (peak) | proxy heap + external MiB | proxy channels | ' +
      'agent RSS MiB (peak) | agent heap + external MiB | agent channels |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  const mem = (m: ProcessMemory) => `${fmt(m.rss)} (${fmt(m.peak)})`;
  const js = (m: ProcessMemory) => `${fmt(m.heap)} + ${fmt(m.external)}`;
  for (const p of r.points) {
    const other = Object.entries(p.codes)
      .filter(([k]) => k !== '200')
      .map(([k, v]) => `${v}× ${k}`)
      .join(', ');
    const answered = p.streams ? `${p.ok} of ${p.streams}${other ? ` (${other})` : ''}` : '–';
    lines.push(
      `| ${p.label} | ${answered} | ${mem(p.proxy)} | ${js(p.proxy)} | ${fmt(p.proxy.channels)} | ` +
        `${mem(p.agent)} | ${js(p.agent)} | ${fmt(p.agent.channels)} |`,
    );
  }
  for (const p of r.points.filter((x) => x.streams > 0)) {
    const per = (m: ProcessMemory, i: ProcessMemory) =>
      `${fmt(m.rss - i.rss)} MiB, ${fmt(((m.rss - i.rss) * 1024) / p.streams)} KiB per stream ` +
      `(peak ${fmt(((m.peak - i.rss) * 1024) / p.streams)} KiB)`;
    lines.push(`| cost over idle: ${p.label} | | ${per(p.proxy, idle.proxy)} | | | ${per(p.agent, idle.agent)} | | |`);
  }
  return lines;
}

export const stalled: Workload<StalledResult> = { name: 'stalled', run: stalledRun, table: stalledTable };
