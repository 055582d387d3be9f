// npm run lint: the three checks CI runs after the type check, each reported even when another fails:
// - prettier: the code is formatted (.prettierrc.json, 120 columns)
// - eslint: eslint.config.js (recommended rules, typescript-eslint, no line over 120 columns)
// - dependency-cruiser: the layering of src/ (.dependency-cruiser.cjs)
// Each runs on this Node (npm puts node_modules/.bin, with Node 24, first on the PATH).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { root } from './lib.mjs';

const bin = (name) => join(root, 'node_modules', '.bin', name);
const CHECKS = [
  {
    name: 'prettier',
    args: [bin('prettier'), '--check', '--cache', '--log-level', 'warn'].concat([
      '{src,test,scripts}/**/*.{ts,mjs,cjs}',
      'eslint.config.js',
      '.dependency-cruiser.cjs',
    ]),
  },
  { name: 'eslint', args: [bin('eslint'), '--cache', '--cache-location', 'node_modules/.cache/eslint/', '.'] },
  { name: 'dependency-cruiser', args: [bin('depcruise'), 'src', '--config', '.dependency-cruiser.cjs'] },
];

const failed = [];
for (const check of CHECKS) {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, check.args, { stdio: 'inherit', cwd: root });
  const took = `${((Date.now() - t0) / 1000).toFixed(1)} s`;
  if (r.status !== 0) failed.push(check.name);
  console.error(`lint: ${check.name} ${r.status === 0 ? 'passed' : 'FAILED'} (${took})`);
}
if (failed.length > 0) {
  console.error(`lint: failed: ${failed.join(', ')}`);
  process.exit(1);
}
