// What the bench prints: the figures on the three paths with their ratios, the relays' CPU and peak RSS,
// the floor, memory, each workload's own table, then the fast path's goals judged from this run; and the
// same as JSON for --json.
import type { Bench, Usage, Workload } from './context.ts';
import { fmt, ratio } from './format.ts';
import { goalsTable, judgeGoals } from './goals.ts';
import { floorTable } from './workloads/floor.ts';
import { memoryTable } from './workloads/memory.ts';

/** the relays' usage over each workload and path: CPU summed, peaks the highest */
function mergedUsage(usage: Usage[]): Map<string, Usage> {
  const merged = new Map<string, Usage>();
  for (const u of usage) {
    const k = `${u.workload}|${u.path}`;
    const m = merged.get(k);
    if (!m) merged.set(k, { ...u });
    else {
      m.cpuA += u.cpuA;
      m.cpuB += u.cpuB;
      m.peakA = Math.max(m.peakA, u.peakA);
      m.peakB = Math.max(m.peakB, u.peakB);
    }
  }
  return merged;
}

function pathsTable(bench: Bench): string[] {
  const lines = [
    '| workload | figure | unit | direct | openssh | tunnel | tunnel/direct | tunnel/openssh |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of bench.rows) {
    const v = r.values;
    lines.push(
      `| ${r.workload} | ${r.figure} | ${r.unit} | ${fmt(v.direct)} | ${fmt(v.openssh)} | ${fmt(v.tunnel)} | ` +
        `${ratio(v.tunnel, v.direct)} | ${ratio(v.tunnel, v.openssh)} |`,
    );
  }
  return lines;
}

function usageTable(merged: Map<string, Usage>): string[] {
  const lines = [
    '| workload | path | CPU s (proxy / ssh) | CPU s (agent / sshd) | peak RSS MiB (proxy / ssh) | ' +
      'peak RSS MiB (agent / sshd) |',
    '| --- | --- | ---: | ---: | ---: | ---: |',
  ];
  for (const u of merged.values())
    lines.push(`| ${u.workload} | ${u.path} | ${fmt(u.cpuA)} | ${fmt(u.cpuB)} | ${fmt(u.peakA)} | ${fmt(u.peakB)} |`);
  return lines;
}

/** The report as text (tables, each followed by an empty line, then a footer) and as JSON. */
export function report(bench: Bench, workloads: Workload[], elapsed: number): { text: string; json: unknown } {
  const { quick, agentArgs } = bench.flags;
  const merged = mergedUsage(bench.usage);
  const tables = [pathsTable(bench), usageTable(merged)];
  if (bench.floor) tables.push(floorTable(bench, merged));
  if (bench.memory) tables.push(memoryTable(bench.memory));
  for (const w of workloads) {
    if (w.table && bench.results.has(w.name)) tables.push(w.table(bench.results.get(w.name), bench));
  }
  const goals = judgeGoals({ rows: bench.rows, usage: merged, memory: bench.memory });
  tables.push(goalsTable(goals));
  const lines = tables.filter((t) => t.length).flatMap((t) => [...t, '']);
  lines.push(
    `(${new Date().toISOString()}, ${elapsed.toFixed(0)} s, ${quick ? 'quick' : 'default'} settings` +
      `${agentArgs.length ? `, agent ${agentArgs.join(' ')}` : ''}; ` +
      'ratios > 1 are better for higher-is-better figures, < 1 for latencies)',
  );
  const json = {
    rows: bench.rows,
    usage: [...merged.values()],
    memory: bench.memory,
    goals,
    ...Object.fromEntries(bench.results),
    elapsedSeconds: elapsed,
    quick,
  };
  return { text: lines.join('\n'), json };
}
