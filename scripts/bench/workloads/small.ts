// small: 200-byte requests at concurrency 1 and 64 on every path (and through the floor's Node relay):
// requests per second, p50 and p99 latency.
import { PATHS, type LoadResult, type PathName, type Workload } from '../context.ts';
import { sampled } from '../proc.ts';

export const SMALL_CONCURRENCY = [1, 64] as const;

export const small: Workload<void> = {
  name: 'small',
  runsFor: ['small', 'floor'],
  async run(bench) {
    const seconds = bench.flags.quick ? 3 : 10;
    for (const c of SMALL_CONCURRENCY) {
      const job = { mode: 'small', path: '/small', concurrency: c, seconds } as const;
      const res: Partial<Record<PathName, LoadResult>> = {};
      for (const p of PATHS)
        res[p] = await bench.measured(`small c=${c}`, p, () => bench.load(bench.endpoints[p], job));
      bench.smallCounts[c] = Object.fromEntries(PATHS.map((p) => [p, res[p]!.requests!]));
      const floor = bench.floor;
      if (floor) {
        const f = await sampled([floor.pid], () => bench.load(floor.ep, job));
        floor.small[c] = {
          rps: f.r.requests! / f.r.seconds!,
          p50: f.r.p50!,
          p99: f.r.p99!,
          cpuUs: (f.cpu[0]! * 1e6) / f.r.requests!,
        };
      }
      const pick = (k: 'rps' | 'p50' | 'p99') =>
        Object.fromEntries(PATHS.map((p) => [p, k === 'rps' ? res[p]!.requests! / res[p]!.seconds! : res[p]![k]!]));
      const workload = `small c=${c}`;
      bench.rows.push({ workload, figure: 'requests/s', unit: 'req/s', better: 'higher', values: pick('rps') });
      bench.rows.push({ workload, figure: 'p50 latency', unit: 'ms', better: 'lower', values: pick('p50') });
      bench.rows.push({ workload, figure: 'p99 latency', unit: 'ms', better: 'lower', values: pick('p99') });
    }
  },
};
