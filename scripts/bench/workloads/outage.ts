// outage: N agents with the default backoff (--max-retry-interval 30s) through a proxy outage long
// enough for every backoff to reach its cap: the time from the proxy serving again until the first and
// the last are back.
import { AGENT_OPTIONS } from '../../../src/config/options.ts';
import type { Workload } from '../context.ts';
import { fmt } from '../format.ts';
import { sleep } from '../proc.ts';
import { Swarm } from '../swarm-handle.ts';

const DEFAULT_MAX_RETRY_INTERVAL_MS = AGENT_OPTIONS.maxRetryInterval.default;
const CONNECT_LIMIT_MS = 180_000;
const BACK_LIMIT_MS = 120_000;

export interface OutageResult {
  agents: number;
  outageSeconds: number;
  firstSeconds: number;
  allSeconds: number;
}

export const outage: Workload<OutageResult> = {
  name: 'outage',
  async run(bench) {
    const { agents, outageSeconds } = bench.flags;
    const tunnel = bench.tunnel;
    await tunnel.restartProxy();
    const { token } = await tunnel.stack.token('outage');
    const url = `ws://127.0.0.1:${tunnel.agentPort}`;
    const swarm = Swarm.start(bench, url, 'outage', token, agents, DEFAULT_MAX_RETRY_INTERVAL_MS);
    await swarm.until(() => swarm.connected() === agents, CONNECT_LIMIT_MS);
    await tunnel.proxy.stop('SIGTERM');
    bench.log(`proxy down for ${outageSeconds} s with ${agents} agents retrying`);
    await sleep(outageSeconds * 1000);
    await tunnel.startProxy();
    const firstSeconds = await swarm.until(() => swarm.connected() > 0, BACK_LIMIT_MS);
    const allSeconds = firstSeconds + (await swarm.until(() => swarm.connected() === agents, BACK_LIMIT_MS));
    swarm.stop();
    bench.log(
      `after a ${outageSeconds} s outage: first agent back ${firstSeconds.toFixed(1)} s, ` +
        `all ${agents} ${allSeconds.toFixed(1)} s after the proxy served again`,
    );
    return { agents, outageSeconds, firstSeconds, allSeconds };
  },
  table(outage) {
    return [
      `| outage (tower only, ${outage.agents} agents, default backoff) | value |`,
      '| --- | ---: |',
      `| proxy down, s | ${outage.outageSeconds} |`,
      `| first agent back after the proxy serves again, s | ${fmt(outage.firstSeconds)} |`,
      `| all agents back after the proxy serves again, s | ${fmt(outage.allSeconds)} |`,
    ];
  },
};
