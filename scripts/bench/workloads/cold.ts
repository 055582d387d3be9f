// cold: a fresh agent process to its first answered request through the tunnel, against one request
// on a fresh client on the direct path (both include a client process's start).
import type { Workload } from '../context.ts';

const COLD_LIMIT_MS = 20_000;

export const cold: Workload<void> = {
  name: 'cold',
  async run(bench) {
    const tunnel = bench.tunnel;
    const { token } = await tunnel.stack.token('cold');
    const ep = await tunnel.gateway('cold');
    const s = Date.now();
    const agent = tunnel.startAgent('cold', token);
    for (;;) {
      try {
        await bench.load(ep, { mode: 'bulk', path: '/small' });
        break;
      } catch {
        if (Date.now() - s > COLD_LIMIT_MS) throw new Error('cold agent never served');
      }
    }
    const viaTunnel = Date.now() - s;
    agent.child.kill('SIGTERM');
    const d = Date.now();
    await bench.load(bench.endpoints.direct, { mode: 'bulk', path: '/small' });
    bench.rows.push({
      workload: 'cold path',
      figure: 'start to first answered request (incl. a client process start)',
      unit: 'ms',
      better: 'lower',
      values: { tunnel: viaTunnel, direct: Date.now() - d },
    });
  },
};
