// npm test: builds what the tests need (dist/tower when sources are newer, the test kube-apiserver
// once, cached outside the clone), then runs every test file with Node's test runner.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const sh = (cmd, args, opts = {}) => {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (r.status !== 0) process.exit(r.status ?? 1);
  return r;
};

const newest = (dir) => readdirSync(dir, { recursive: true, withFileTypes: true })
  .filter((e) => e.isFile())
  .reduce((t, e) => Math.max(t, statSync(join(e.parentPath, e.name)).mtimeMs), 0);
const binary = join(root, 'dist', 'tower');
if (!existsSync(binary) || statSync(binary).mtimeMs < newest(join(root, 'src'))) sh(process.execPath, ['scripts/build.mjs']);
sh('bash', ['scripts/test-cluster.sh', 'build'], { stdio: ['ignore', 'ignore', 'inherit'] });

const files = process.argv.slice(2).length ? process.argv.slice(2)
  : readdirSync(join(root, 'test')).filter((f) => f.endsWith('.test.ts')).sort().map((f) => join('test', f));
sh(process.execPath, ['--test', '--test-concurrency=1', '--test-timeout=300000', ...files]);
