// npm run test:ship: builds both binaries and the image, then runs test/ship (the OCI image from
// its own root filesystem, linux-arm64 under qemu-user). Needs root (chroot), umoci, skopeo,
// qemu-user and g++-aarch64-linux-gnu (Debian); .ci/run installs them.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { root } from './lib.mjs';

const sh = (cmd, args) => {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
const t0 = Date.now();
sh(process.execPath, [join(root, 'scripts', 'build.mjs'), '--arch', 'all']);
sh(process.execPath, [join(root, 'scripts', 'image.mjs'), '--arch', 'all']);
sh('bash', [join(root, 'scripts', 'test-cluster.sh'), 'build']);
sh(process.execPath, ['--test', '--test-concurrency=1', '--test-timeout=600000', join('test', 'ship', 'ship.test.ts')]);
console.error(`test:ship: ${((Date.now() - t0) / 1000).toFixed(0)} s`);
