// watch: many concurrent watch streams on every path, one event a second each: the share delivered.
import { PATHS, type PathName, type Workload } from '../context.ts';

export const watch: Workload<void> = {
  name: 'watch',
  async run(bench) {
    const streams = bench.flags.quick ? 200 : 1000;
    const events = bench.flags.quick ? 5 : 10;
    const delivered: Partial<Record<PathName, number>> = {};
    for (const p of PATHS) {
      const r = await bench.measured('watch', p, () =>
        bench.load(bench.endpoints[p], { mode: 'watch', path: `/watch?n=${events}`, streams }),
      );
      if (r.failed) bench.log(`watch on ${p}: ${r.failed} of ${streams} streams failed`);
      delivered[p] = r.events! / (streams * events);
    }
    bench.rows.push({
      workload: 'watch',
      figure: `${streams} streams × ${events} events delivered`,
      unit: 'fraction',
      better: 'higher',
      values: delivered,
    });
  },
};
