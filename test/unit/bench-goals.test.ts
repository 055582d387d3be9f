import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Row, Usage } from '../../scripts/bench/context.ts';
import { goalsTable, judgeGoals } from '../../scripts/bench/goals.ts';

// the fast path's goals are ratios against references measured in the same run: these tests hold the
// bench's verdict to the figures it printed
const row = (workload: string, figure: string, openssh: number, tunnel: number, unit = 'ms'): Row => ({
  workload,
  figure,
  unit,
  better: unit === 'ms' ? 'lower' : 'higher',
  values: { direct: 1, openssh, tunnel },
});
const usage = (path: 'openssh' | 'tunnel', cpuA: number, cpuB: number, peakA: number, peakB: number): Usage => ({
  workload: 'bulk',
  path,
  cpuA,
  cpuB,
  peakA,
  peakB,
});
const resident = (rss: number) => ({ rss, anon: 0, file: 0, fds: 0 });

describe('the bench judges the fast path goals from its own figures', () => {
  const rows = [
    row('small c=1', 'p50 latency', 0.5, 0.9),
    row('small c=1', 'p99 latency', 2, 5.2),
    row('small c=64', 'requests/s', 3000, 2800, 'req/s'),
    row('bulk', 'GET 1024 MiB (curl), median of 3', 400, 200, 'MB/s'),
  ];
  const used = new Map([
    ['bulk|openssh', usage('openssh', 1, 1, 10, 10)],
    ['bulk|tunnel', usage('tunnel', 3, 3, 90, 97)],
  ]);
  const memory = { start: { agent: resident(55), runtime: resident(41) } };
  const goals = judgeGoals({ rows, usage: used, memory });
  const verdict = Object.fromEntries(goals.map((g) => [g.goal.split(':')[0], [g.shown, g.met]]));

  test('each ratio is the tunnel against OpenSSH, met on the right side of its limit', () => {
    assert.deepEqual(verdict['small c=1, p50 latency'], ['1.80×', true]);
    assert.deepEqual(verdict['small c=1, p99 latency'], ['2.60×', false]);
    assert.deepEqual(verdict['small c=64, requests/s'], ['0.93×', true]);
    assert.deepEqual(verdict['bulk, MB/s'], ['0.50×', false]);
  });

  test('CPU per GiB is both relaying processes of each path; the peak is the larger of proxy and agent', () => {
    assert.deepEqual(verdict['bulk, CPU per GiB (both relaying processes)'], ['3.00×', false]);
    assert.deepEqual(verdict['bulk, peak RSS of the larger of proxy and agent'], ['97.0 MiB', false]);
  });

  test("the idle agent's memory is a margin over Node running nothing, from the same run", () => {
    assert.deepEqual(verdict['idle agent RSS'], ['+14.0 MiB', true]);
  });

  test('a goal whose figures the run did not take is not judged, nor printed', () => {
    const only = judgeGoals({ rows: rows.slice(0, 1), usage: new Map() });
    assert.deepEqual(
      only.map((g) => g.goal),
      ['small c=1, p50 latency: at most 2× OpenSSH'],
    );
    assert.deepEqual(goalsTable([]), []);
    assert.match(goalsTable(only).at(-1)!, /^\| small c=1, p50 latency: at most 2× OpenSSH \| 1\.80× \| yes \|$/);
  });
});
