// npm run test:cluster: tower as its users run it, on a real single-node Kubernetes started here
// (scripts/test-node.sh): builds dist/tower and its amd64 image, builds the node's components once (cached
// outside the clone), brings the node up with the image imported, runs test/cluster/, and takes the node
// down again, also when a test failed or the run was interrupted. Needs root.
//   npm run test:cluster [-- test/cluster/FILE.test.ts ...]
//   TOWER_NODE_KEEP=1 leaves the node up (its state dir is printed; `test-cluster.sh node down DIR` ends it)
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { binary, ensureBuilt, root } from './lib.mjs';

const sh = (cmd, args, env = {}) => {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, env: { ...process.env, ...env } });
  return r.status ?? 1;
};
const must = (cmd, args, env) => {
  const status = sh(cmd, args, env);
  if (status !== 0) process.exit(status);
};
const t0 = Date.now();
const elapsed = () => `${((Date.now() - t0) / 1000).toFixed(0)} s`;

ensureBuilt();
const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const image = join(root, 'dist', `tower-${version}-amd64.tar`);
if (!existsSync(image) || statSync(image).mtimeMs < statSync(binary).mtimeMs) {
  must(process.execPath, [join(root, 'scripts', 'image.mjs'), '--arch', 'x64']);
}
must('bash', [join(root, 'scripts', 'test-cluster.sh'), 'node', 'build']);
console.error(`test:cluster: built in ${elapsed()}`);

const state = mkdtempSync(join(tmpdir(), 'tower-node-'));
const down = () => sh('bash', [join(root, 'scripts', 'test-cluster.sh'), 'node', 'down', state]);
let status = 1;
let downed = false;
const finish = () => {
  if (downed) return;
  downed = true;
  if (process.env.TOWER_NODE_KEEP) console.error(`test:cluster: the node stays up in ${state}`);
  else if (down() === 0) rmSync(state, { recursive: true, force: true });
  else console.error(`test:cluster: the node did not come down cleanly; its state is in ${state}`);
};
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    finish();
    process.exit(130);
  });
}
try {
  if (sh('bash', [join(root, 'scripts', 'test-cluster.sh'), 'node', 'up', state], { IMAGES: image }) === 0) {
    console.error(`test:cluster: node up after ${elapsed()}`);
    const named = process.argv.slice(2);
    const files =
      named.length > 0
        ? named
        : readdirSync(join(root, 'test', 'cluster'))
            .filter((f) => f.endsWith('.test.ts'))
            .sort()
            .map((f) => join('test', 'cluster', f));
    status = sh(process.execPath, ['--test', '--test-concurrency=1', '--test-timeout=900000', ...files], {
      TOWER_NODE_DIR: state,
      TOWER_IMAGE: `tower:${version}`,
    });
  }
} finally {
  finish();
}
console.error(`test:cluster: ${status === 0 ? 'passed' : 'failed'} in ${elapsed()}`);
process.exit(status);
