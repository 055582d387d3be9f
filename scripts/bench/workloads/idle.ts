// idle: an idle proxy's CPU with no cluster, then with many in its file store (a proxy of its own).
import { mkdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Stack } from '../../../test/support/stack.ts';
import type { Workload } from '../context.ts';
import { fmt } from '../format.ts';
import { cpuSeconds, sleep } from '../proc.ts';

/** before each measure: the proxy settles */
const SETTLE_MS = 2000;
const REGISTER_LIMIT_MS = 30_000;

export interface IdleResult {
  clusters: number;
  /** % of a core */
  none: number;
  many: number;
}

export const idle: Workload<IdleResult> = {
  name: 'idle',
  async run(bench) {
    const clusters = bench.flags.quick ? 100 : 400;
    const seconds = bench.flags.quick ? 5 : 10;
    const stack = bench.adopt(new Stack());
    mkdirSync(join(stack.dataDir, 'clusters'), { recursive: true });
    const proxy = await stack.startProxy();
    const idlePercent = async () => {
      await sleep(SETTLE_MS);
      const c0 = cpuSeconds(proxy.pid);
      await sleep(seconds * 1000);
      return ((cpuSeconds(proxy.pid) - c0) / seconds) * 100;
    };
    const none = await idlePercent();
    // the file store's own format, as `tower token` writes it
    for (let i = 0; i < clusters; i++) {
      writeFileSync(
        join(stack.dataDir, 'clusters', `idle-${i}.yaml`),
        `name: idle-${i}\ntoken: ${randomBytes(32).toString('hex')}\n` +
          `createdAt: "${new Date().toISOString()}"\ngeneration: 1\n`,
        { mode: 0o600 },
      );
    }
    const s = Date.now();
    while ((proxy.output.match(/cluster registered/g) ?? []).length < clusters) {
      if (Date.now() - s > REGISTER_LIMIT_MS) throw new Error('the proxy did not register the idle clusters');
      await sleep(100);
    }
    const many = await idlePercent();
    await proxy.stop('SIGTERM');
    await bench.dispose(stack);
    bench.log(`idle proxy CPU: ${none.toFixed(2)}% with no cluster, ${many.toFixed(2)}% with ${clusters}`);
    return { clusters, none, many };
  },
  table(idle) {
    return [
      '| idle proxy (tower only, file store) | value |',
      '| --- | ---: |',
      `| CPU with no cluster, % of a core | ${fmt(idle.none)} |`,
      `| CPU with ${idle.clusters} clusters, % of a core | ${fmt(idle.many)} |`,
    ];
  },
};
