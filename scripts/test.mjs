// npm test: builds what the tests need (dist/tower when the sources are newer; the test
// kube-apiserver once, cached outside the clone), then runs the test files with Node's runner.
// `npm test -- test/quickstart.test.ts` runs one file.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ensureBuilt, root } from './lib.mjs';

const sh = (cmd, args, stdio = 'inherit') => {
  const r = spawnSync(cmd, args, { stdio, cwd: root });
  if (r.status !== 0) process.exit(r.status ?? 1);
};

ensureBuilt();
sh('bash', ['scripts/test-cluster.sh', 'build'], ['ignore', 'ignore', 'inherit']);
const files =
  process.argv.length > 2
    ? process.argv.slice(2)
    : readdirSync(join(root, 'test'))
        .filter((f) => f.endsWith('.test.ts'))
        .sort()
        .map((f) => join('test', f));
sh(process.execPath, ['--test', '--test-concurrency=1', '--test-timeout=300000', ...files]);
