// Helpers shared by the npm scripts.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const binary = join(root, 'dist', 'tower');

/** Builds dist/tower when it is missing or older than any source file. */
export function ensureBuilt() {
  const newest = readdirSync(join(root, 'src'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .reduce(
      (t, e) => Math.max(t, statSync(join(e.parentPath, e.name)).mtimeMs),
      statSync(join(root, 'package.json')).mtimeMs,
    );
  if (existsSync(binary) && statSync(binary).mtimeMs >= newest) return;
  const r = spawnSync(process.execPath, [join(root, 'scripts', 'build.mjs')], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
