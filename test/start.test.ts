import assert from 'node:assert/strict';
import { chownSync, mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { pattern } from './support/pattern.ts';
import { run, tempDir, TOWER } from './support/tower.ts';

/**
 * The binary carries the native crypto binding and writes it to a private directory to load it:
 * an unusable or read-only TMPDIR must neither hang a start nor go unsaid.
 */
const START_LIMIT_MS = 10_000;

/** runs the binary under a mount namespace of its own, with `mounts` (tmpfs mount options by path) set up first */
function isolated(mounts: Record<string, string>, env: Record<string, string>, args: string[]) {
  const setup = Object.entries(mounts)
    .map(([dir, options]) => `mount -t tmpfs -o ${options} tmpfs ${dir}`)
    .join(' && ');
  const exports = Object.entries(env)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
  return run(
    'unshare',
    ['-m', 'sh', '-c', `${setup} && exec env ${exports} XDG_RUNTIME_DIR= ${TOWER} ${args.join(' ')}`],
    { timeoutMs: START_LIMIT_MS },
  );
}

test('an unusable TMPDIR (under /proc): --version returns at once, and the JS fallback is said once', async () => {
  const home = tempDir('home-ro');
  const started = Date.now();
  const r = await run(
    'unshare',
    [
      '-m',
      'sh',
      '-c',
      `mount -t tmpfs -o ro tmpfs ${home} && exec env TMPDIR=/proc/tower-test/tmp ` +
        `HOME=${home} XDG_RUNTIME_DIR= ${TOWER} --version`,
    ],
    { timeoutMs: START_LIMIT_MS },
  );
  const ms = Date.now() - started;
  assert.equal(r.code, 0, `tower --version did not finish by itself (${ms} ms): ${r.stderr}`);
  assert.equal(r.stdout, '0.1.0\n');
  const warnings = r.stderr.split('\n').filter(Boolean);
  assert.equal(warnings.length, 1, r.stderr);
  assert.match(
    warnings[0]!,
    pattern(
      /^tower: warning: running on the JS crypto: the native crypto binding /,
      /could not be written and loaded \(\/proc\/tower-test\/tmp: ENOENT; [^)]*\); /,
      /set TMPDIR to a writable directory that allows executables$/,
    ),
  );
});

test(
  'a read-only TMPDIR: the binding is loaded from ~/.cache instead; ' +
    'with nothing writable, tower version says js and why',
  async () => {
    const tmp = tempDir('tmp-ro');
    const home = tempDir('home');
    const fallback = await isolated({ [tmp]: 'ro' }, { TMPDIR: tmp, HOME: home }, ['version']);
    assert.equal(fallback.code, 0, fallback.stderr);
    assert.match(fallback.stdout, /crypto: native\n$/);
    assert.equal(fallback.stderr, '');

    const none = await isolated({ [tmp]: 'ro', [home]: 'ro' }, { TMPDIR: tmp, HOME: home }, ['version', '-o', 'json']);
    assert.equal(none.code, 0, none.stderr);
    const info = JSON.parse(none.stdout) as { crypto: string; cryptoProblem: string };
    assert.equal(info.crypto, 'js');
    assert.match(info.cryptoProblem, /EROFS/);
    assert.match(none.stderr, /^tower: warning: running on the JS crypto: /);
  },
);

test('a TMPDIR that allows no executables (noexec): the binding is loaded from the next place', async () => {
  const tmp = tempDir('tmp-noexec');
  const home = tempDir('home2');
  mkdirSync(join(home, '.cache'), { recursive: true });
  const r = await isolated({ [tmp]: 'noexec' }, { TMPDIR: tmp, HOME: home }, ['version']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /crypto: native\n$/);
});

test(
  'a private directory that another user made (or a link) is not used: ' + 'no library planted there is loaded',
  async () => {
    const tmp = tempDir('tmp-planted');
    const home = tempDir('home3');
    const uid = process.getuid!();
    const planted = join(tmp, `tower-${uid}`);
    mkdirSync(planted, { mode: 0o700 });
    chownSync(planted, uid + 1000, uid + 1000);
    const r = await run(TOWER, ['version'], { env: { TMPDIR: tmp, HOME: home, XDG_RUNTIME_DIR: '' } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /crypto: native\n$/, 'loaded from ~/.cache instead');
    assert.deepEqual(readdirSync(planted), [], "nothing written into (or read from) the other user's directory");
    assert.ok(readdirSync(join(home, '.cache', `tower-${uid}`)).some((f) => f.endsWith('.node')));

    const linked = tempDir('tmp-link');
    symlinkSync(planted, join(linked, `tower-${uid}`));
    const viaLink = await run(TOWER, ['version'], { env: { TMPDIR: linked, HOME: home, XDG_RUNTIME_DIR: '' } });
    assert.match(viaLink.stdout, /crypto: native\n$/);
    assert.deepEqual(readdirSync(planted), []);
  },
);
