// soak: many requests through one fresh proxy and its agent (mixed sizes, reused and fresh connections,
// watches reopened throughout): RSS and open descriptors sampled every second must stay flat (last third
// against first third), no listener warning, and SIGTERM afterwards must end the proxy at once.
import type { Bench, Endpoint, Workload } from '../context.ts';
import { fmt, ratio } from '../format.ts';
import { cpuSeconds, mean, openFds, rssMiB } from '../proc.ts';

const SOAK_CONCURRENCY = 32;
const SOAK_WATCHES = 16;
const SAMPLE_EVERY_MS = 1000;
const SERVED_LIMIT_MS = 20_000;
const SERVED_POLL_MS = 200;

export interface SoakResult {
  requests: number;
  failed: number;
  seconds: number;
  cpuProxy: number;
  cpuAgent: number;
  /** first third, last third */
  proxyRss: number[];
  agentRss: number[];
  proxyFds: number[];
  agentFds: number[];
  warnings: number;
  exitSeconds: number;
  exitCode: number | null;
}

/** Waits until a request through `ep` is answered (after a restart, the agent comes back first). */
export async function waitServed(bench: Bench, ep: Endpoint): Promise<void> {
  const s = Date.now();
  for (;;) {
    try {
      await bench.load(ep, { mode: 'bulk', path: '/small' });
      return;
    } catch {
      if (Date.now() - s > SERVED_LIMIT_MS) throw new Error('the tunnel did not serve within 20 s');
    }
    await new Promise((r) => setTimeout(r, SERVED_POLL_MS));
  }
}

export const soak: Workload<SoakResult> = {
  name: 'soak',
  async run(bench) {
    const tunnel = bench.tunnel;
    await tunnel.restartProxy();
    await waitServed(bench, tunnel.endpoint);
    const { proxy, agent } = tunnel;
    const from = [proxy.output.length, agent.output.length];
    const samples: { proxyRss: number; agentRss: number; proxyFds: number; agentFds: number }[] = [];
    const sampler = setInterval(() => {
      try {
        samples.push({
          proxyRss: rssMiB(proxy.pid),
          agentRss: rssMiB(agent.pid),
          proxyFds: openFds(proxy.pid),
          agentFds: openFds(agent.pid),
        });
      } catch {
        /* a process between lives */
      }
    }, SAMPLE_EVERY_MS);
    const cpu0 = [cpuSeconds(proxy.pid), cpuSeconds(agent.pid)];
    const r = await bench.load(tunnel.endpoint, {
      mode: 'soak',
      path: '/small',
      concurrency: SOAK_CONCURRENCY,
      streams: SOAK_WATCHES,
      requests: bench.flags.soakRequests,
      freshEvery: bench.flags.soakFreshEvery,
    });
    clearInterval(sampler);
    const cpu = [cpuSeconds(proxy.pid) - cpu0[0]!, cpuSeconds(agent.pid) - cpu0[1]!];
    const third = Math.max(1, Math.floor(samples.length / 3));
    const first = samples.slice(0, third);
    const last = samples.slice(-third);
    const avg = (part: typeof samples, k: keyof (typeof samples)[number]) => mean(part.map((x) => x[k]));
    const said = proxy.output.slice(from[0]) + agent.output.slice(from[1]);
    const warnings = said.match(/MaxListenersExceededWarning/g)?.length ?? 0;
    const t = Date.now();
    const exitCode = await proxy.stop('SIGTERM');
    const exitSeconds = (Date.now() - t) / 1000;
    await tunnel.startProxy();
    const result = {
      requests: r.requests!,
      failed: r.failed!,
      seconds: r.seconds!,
      cpuProxy: cpu[0]!,
      cpuAgent: cpu[1]!,
      proxyRss: [avg(first, 'proxyRss'), avg(last, 'proxyRss')],
      agentRss: [avg(first, 'agentRss'), avg(last, 'agentRss')],
      proxyFds: [avg(first, 'proxyFds'), avg(last, 'proxyFds')],
      agentFds: [avg(first, 'agentFds'), avg(last, 'agentFds')],
      warnings,
      exitSeconds,
      exitCode,
    };
    const mib = (pair: number[]) => pair.map((x) => x.toFixed(0)).join(' → ');
    bench.log(
      `soak: ${result.requests} requests in ${result.seconds.toFixed(0)} s, ` +
        `proxy RSS ${mib(result.proxyRss)} MiB, agent ${mib(result.agentRss)} MiB`,
    );
    return result;
  },
  table(soak, bench) {
    const pair = (p: number[]) => `${fmt(p[0])} → ${fmt(p[1])} (${ratio(p[1], p[0])})`;
    return [
      '| soak (tower only) | value |',
      '| --- | ---: |',
      `| requests (every 10th 64 KiB, every ${bench.flags.soakFreshEvery}th on a fresh connection; ` +
        `${SOAK_WATCHES} watches reopened throughout), failed | ${soak.requests}, ${soak.failed} |`,
      `| duration, s / CPU s proxy, agent | ${fmt(soak.seconds)} / ${fmt(soak.cpuProxy)}, ${fmt(soak.cpuAgent)} |`,
      `| proxy RSS, MiB, first third → last third | ${pair(soak.proxyRss)} |`,
      `| agent RSS, MiB, first third → last third | ${pair(soak.agentRss)} |`,
      `| open descriptors proxy, agent, first third → last third | ${pair(soak.proxyFds)}, ${pair(soak.agentFds)} |`,
      `| listener warnings (MaxListenersExceededWarning) | ${soak.warnings} |`,
      `| SIGTERM afterwards: proxy gone in, s (exit code) | ${fmt(soak.exitSeconds)} (${soak.exitCode}) |`,
    ];
  },
};
