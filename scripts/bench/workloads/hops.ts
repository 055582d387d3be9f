// hops: one request at a time, hop by hop, on the openssh and tunnel paths: tcpdump's timestamps give
// each relay's share (median), a second run under strace the event-loop waits and write calls per
// request (scripts/bench/hops.ts reads both). With --profile that second run is left out: ptrace stops
// every system call, which the profiles would show as time spent writing.
import type { Bench, Workload } from '../context.ts';
import { ratio } from '../format.ts';
import { captureLegs, countCalls, HOPS, hopTimes, type HopPorts, type HopTimes } from '../hops.ts';
import { cpuSplit, ensureTools } from '../proc.ts';

type Relayed = 'openssh' | 'tunnel';
interface PathHops {
  hops: HopTimes;
  requests: number;
  /** µs of user and system CPU per request, for each relay */
  cpu: [number, number][];
  calls?: { waits: number[]; writes: number[]; requests: number };
}
export type HopsResult = Partial<Record<Relayed, PathHops>>;

/** where each path's legs are seen on the wire */
function hopPorts(bench: Bench): Record<Relayed, HopPorts> {
  const upstream = bench.upstreamPort;
  return {
    openssh: { entry: bench.openssh.port, middle: bench.openssh.sshdPort, upstream, middleListensAtEntry: false },
    tunnel: { entry: bench.tunnel.gatewayPort, middle: bench.tunnel.agentPort, upstream, middleListensAtEntry: true },
  };
}

export const hops: Workload<HopsResult> = {
  name: 'hops',
  async run(bench) {
    ensureTools(
      [
        ['tcpdump', 'tcpdump'],
        ['strace', 'strace'],
      ],
      (m) => bench.log(m),
    );
    const ports = hopPorts(bench);
    const job = { mode: 'small', path: '/small', concurrency: 1, seconds: bench.flags.quick ? 2 : 4 } as const;
    const out: HopsResult = {};
    for (const p of ['openssh', 'tunnel'] as const) {
      const pids = [...bench.relays[p]!];
      const capture = await captureLegs(ports[p]);
      const cpu0 = pids.map(cpuSplit);
      const loaded = await bench.load(bench.endpoints[p], job);
      const cpu = pids.map(
        (pid, i) => cpuSplit(pid).map((v, k) => ((v - cpu0[i]![k]!) * 1e6) / loaded.requests!) as [number, number],
      );
      const timed = hopTimes(await capture.stop());
      let calls;
      if (!bench.flags.profile) {
        const counted = await countCalls(pids, () => bench.load(bench.endpoints[p], job));
        calls = { waits: counted.waits, writes: counted.writes, requests: counted.result.requests! };
      }
      out[p] = { ...timed, cpu, calls };
    }
    return out;
  },
  table(result) {
    if (!result.openssh || !result.tunnel) return [];
    const [o, t] = [result.openssh, result.tunnel];
    const us = (v: number) => (Number.isNaN(v) ? '–' : v.toFixed(0));
    const lines = [
      `| c=1 per hop, median µs (tcpdump on lo; ${o.requests} / ${t.requests} requests) | openssh | tunnel | ` +
        'tunnel/openssh |',
      '| --- | ---: | ---: | ---: |',
    ];
    const where = [
      'ssh / proxy: gateway → channel → WebSocket',
      'sshd / agent: WebSocket → channel → upstream TLS',
      'the same upstream',
      'sshd / agent',
      'ssh / proxy',
    ];
    HOPS.forEach((h, i) =>
      lines.push(`| ${h} (${where[i]}) | ${us(o.hops[h])} | ${us(t.hops[h])} | ${ratio(t.hops[h], o.hops[h])} |`),
    );
    const sum = (x: PathHops) => HOPS.reduce((a, h) => a + x.hops[h], 0);
    lines.push(`| sum of the medians | ${us(sum(o))} | ${us(sum(t))} | ${ratio(sum(t), sum(o))} |`);
    if (o.calls && t.calls) {
      const per = (k: 'waits' | 'writes', c: NonNullable<PathHops['calls']>) =>
        c[k].map((n) => (n / c.requests).toFixed(1)).join(' / ');
      lines.push(
        '| event-loop waits per request, first / second relay ' +
          `(strace -c, ${o.calls.requests} / ${t.calls.requests} requests) | ` +
          `${per('waits', o.calls)} | ${per('waits', t.calls)} | – |`,
      );
      const writes = `${per('writes', o.calls)} | ${per('writes', t.calls)}`;
      lines.push(`| write calls per request, first / second relay | ${writes} | – |`);
    }
    for (const [i, who] of [
      [0, 'first relay (ssh / proxy)'],
      [1, 'second relay (sshd / agent)'],
    ] as const) {
      const [oc, tc] = [o.cpu[i]!, t.cpu[i]!];
      lines.push(
        `| CPU per request, µs user + system, ${who} | ${us(oc[0])} + ${us(oc[1])} | ${us(tc[0])} + ${us(tc[1])} | ` +
          `${ratio(tc[0] + tc[1], oc[0] + oc[1])} |`,
      );
    }
    return lines;
  },
};
