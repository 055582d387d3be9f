// The fast path's goals, each a ratio or a margin against a reference measured in the same run (OpenSSH's
// two relays, Node 24 running nothing), judged from the report's own figures: what `npm run bench` prints
// last, and what --json carries as `goals`. A goal whose figures this run did not take is not judged.
import type { PathName, Row, Usage } from './context.ts';
import { fmt } from './format.ts';
import type { Memory } from './workloads/memory.ts';

export interface Goal {
  goal: string;
  /** the measured ratio or figure */
  value: number;
  /** how `value` reads: "1.87×", "+33.6 MiB", "120 MiB" */
  shown: string;
  met: boolean;
}

/** the figures a goal is judged from: the report's rows, the relays' usage, their memory */
export interface GoalFigures {
  rows: readonly Row[];
  usage: ReadonlyMap<string, Usage>;
  memory?: Memory;
}

const x = (v: number) => `${v.toFixed(2)}×`;
const mib = (v: number) => `${fmt(v)} MiB`;

export function judgeGoals({ rows, usage, memory }: GoalFigures): Goal[] {
  const value = (workload: string, figure: string, p: PathName) =>
    rows.find((r) => r.workload === workload && r.figure.startsWith(figure))?.values[p];
  const ratio = (workload: string, figure: string): number | undefined => {
    const t = value(workload, figure, 'tunnel');
    const o = value(workload, figure, 'openssh');
    return t !== undefined && o ? t / o : undefined;
  };
  const goals: Goal[] = [];
  const atMost = (goal: string, v: number | undefined, limit: number, shown = x) => {
    if (v !== undefined) goals.push({ goal, value: v, shown: shown(v), met: v <= limit });
  };
  const atLeast = (goal: string, v: number | undefined, limit: number) => {
    if (v !== undefined) goals.push({ goal, value: v, shown: x(v), met: v >= limit });
  };
  atMost('small c=1, p50 latency: at most 2× OpenSSH', ratio('small c=1', 'p50'), 2);
  atMost('small c=1, p99 latency: at most 2.5× OpenSSH', ratio('small c=1', 'p99'), 2.5);
  atLeast('small c=64, requests/s: at least 0.9× OpenSSH', ratio('small c=64', 'requests/s'), 0.9);
  atLeast('bulk, MB/s: at least 0.6× OpenSSH', ratio('bulk', 'GET'), 0.6);
  // the same bytes went through both: the ratio of CPU seconds is the ratio of CPU per GiB
  const tunnel = usage.get('bulk|tunnel');
  const openssh = usage.get('bulk|openssh');
  if (tunnel && openssh) {
    const cpu = (tunnel.cpuA + tunnel.cpuB) / (openssh.cpuA + openssh.cpuB);
    atMost('bulk, CPU per GiB (both relaying processes): at most 2.5× OpenSSH', cpu, 2.5);
    const peak = Math.max(tunnel.peakA, tunnel.peakB);
    atMost('bulk, peak RSS of the larger of proxy and agent: at most 96 MiB', peak, 96, mib);
  }
  const agent = memory?.start.agent;
  const runtime = memory?.start.runtime;
  if (agent && runtime) {
    const over = agent.rss - runtime.rss;
    atMost('idle agent RSS: at most 15 MiB over Node 24 running nothing', over, 15, (v) => `+${mib(v)}`);
  }
  return goals;
}

export function goalsTable(goals: readonly Goal[]): string[] {
  if (goals.length === 0) return [];
  return [
    '| goal (against a reference measured in this run) | this run | met |',
    '| --- | ---: | --- |',
    ...goals.map((g) => `| ${g.goal} | ${g.shown} | ${g.met ? 'yes' : 'no'} |`),
  ];
}
