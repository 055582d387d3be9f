// scale: N idle agents (tower's agent code, many per process) on one fresh proxy: its RSS per agent, the
// handshakes per second with all of them dialing at once, and how long after a restart until all are back.
import type { Workload } from '../context.ts';
import { fmt } from '../format.ts';
import { cpuSeconds, rssMiB, sleep } from '../proc.ts';
import { Swarm } from '../swarm-handle.ts';

const CONNECT_LIMIT_MS = 180_000;
const RECONNECT_LIMIT_MS = 60_000;
const SETTLE_MS = 1000;

export interface ScaleResult {
  agents: number;
  connectSeconds: number;
  perAgentKiB: number;
  handshakesPerSecond: number;
  reconnectSeconds: number;
  proxyRssMiB: number;
  proxyCpuSeconds: number;
}

export const scale: Workload<ScaleResult> = {
  name: 'scale',
  async run(bench) {
    const agents = bench.flags.agents;
    const tunnel = bench.tunnel;
    // a fresh proxy, so that the earlier workloads' heap does not hide the agents' cost
    await tunnel.restartProxy();
    await sleep(SETTLE_MS);
    const before = rssMiB(tunnel.proxy.pid);
    const { token } = await tunnel.stack.token('swarm');
    const swarm = Swarm.start(bench, `ws://127.0.0.1:${tunnel.agentPort}`, 'swarm', token, agents);
    const waitAll = (limitMs: number) => swarm.until(() => swarm.connected() >= agents, limitMs);
    const connectSeconds = await waitAll(CONNECT_LIMIT_MS);
    const cpuConnect = cpuSeconds(tunnel.proxy.pid);
    await sleep(SETTLE_MS);
    const after = rssMiB(tunnel.proxy.pid);
    bench.log(
      `${agents} agents connected in ${connectSeconds.toFixed(1)} s ` +
        `(proxy RSS ${before.toFixed(0)} → ${after.toFixed(0)} MiB)`,
    );
    // restart the proxy on the same ports and data dir, once every agent has seen it go
    const r0 = Date.now();
    await tunnel.restartProxy(() => swarm.connected() === 0);
    const back = await waitAll(RECONNECT_LIMIT_MS);
    const reconnectSeconds = Number.isNaN(back) ? NaN : (Date.now() - r0) / 1000;
    swarm.stop();
    return {
      agents,
      connectSeconds,
      perAgentKiB: ((after - before) * 1024) / agents,
      handshakesPerSecond: agents / connectSeconds,
      reconnectSeconds,
      proxyRssMiB: after,
      proxyCpuSeconds: cpuConnect,
    };
  },
  table(scale) {
    return [
      '| scale (tower only) | value |',
      '| --- | ---: |',
      `| idle agents on one proxy | ${scale.agents} |`,
      `| proxy RSS with them, MiB | ${fmt(scale.proxyRssMiB)} |`,
      `| proxy RSS per agent, KiB | ${fmt(scale.perAgentKiB)} |`,
      `| handshakes per second (all agents dialing at once) | ${fmt(scale.handshakesPerSecond)} |`,
      `| all agents back after a proxy restart, s | ${fmt(scale.reconnectSeconds)} |`,
    ];
  },
};
