// npm test: first the unit tests (test/unit/: pure parts, no process, seconds, nothing to build), then the
// end-to-end suite (test/*.test.ts), which needs dist/tower (built when the sources are newer) and the test
// kube-apiserver (built once, cached outside the clone), one file at a time.
// `npm test -- test/quickstart.test.ts` runs one file (a file under test/unit/ builds nothing);
// `npm run test:unit` (`npm test -- --unit`) runs the unit tests alone.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { ensureBuilt, root } from './lib.mjs';

const UNIT_DIR = join('test', 'unit');

const sh = (cmd, args, stdio = 'inherit') => {
  const r = spawnSync(cmd, args, { stdio, cwd: root });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
/** the *.test.ts files of dir (relative to the root), sorted; recursive for test/unit */
const testFiles = (dir, recursive) =>
  readdirSync(join(root, dir), { recursive })
    .filter((f) => f.endsWith('.test.ts'))
    .sort()
    .map((f) => join(dir, f));
const isUnit = (file) => !relative(join(root, UNIT_DIR), resolve(root, file)).startsWith('..');

const args = process.argv.slice(2);
const unitOnly = args.includes('--unit');
const named = args.filter((a) => a !== '--unit');
const unit = named.length > 0 ? named.filter(isUnit) : testFiles(UNIT_DIR, true);
const e2e = named.length > 0 ? named.filter((f) => !isUnit(f)) : unitOnly ? [] : testFiles('test', false);

// pure and independent: several files at once
if (unit.length > 0) sh(process.execPath, ['--test', '--test-timeout=60000', ...unit]);
if (e2e.length > 0) {
  ensureBuilt();
  sh('bash', ['scripts/test-cluster.sh', 'build'], ['ignore', 'ignore', 'inherit']);
  sh(process.execPath, ['--test', '--test-concurrency=1', '--test-timeout=300000', ...e2e]);
}
