// Stands in for ssh2's `require('./crypto/build/Release/sshcrypto.node')` in the bundle: a single
// executable cannot require a .node file, so the binding travels as a SEA asset, is written once
// to a private directory and loaded with process.dlopen. Throws when it cannot be, as a missing
// binding does, and ssh2 then uses its JS crypto; the reason is kept in
// globalThis.__towerNativeCryptoProblem for the one warning that says so.
//
// Each place is tried once, without recursion or retries (a recursive mkdir under an unusable
// TMPDIR such as /proc/x spins for ever in Node 24): $TMPDIR (or /tmp), $XDG_RUNTIME_DIR,
// ~/.cache; a directory is used only when it is ours (not a link, our uid, mode 0700), so that no
// other user of a shared /tmp can plant a library for us to load.
'use strict';
const { createHash } = require('node:crypto');
const {
  chmodSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} = require('node:fs');
const { homedir, tmpdir } = require('node:os');
const { join } = require('node:path');

const sea = require('node:sea');
if (!sea.isSea()) throw new Error('sshcrypto.node is embedded in the tower binary only');
const bytes = Buffer.from(sea.getRawAsset('sshcrypto.node'));
const hash = createHash('sha256').update(bytes).digest('hex').slice(0, 16);
const uid = process.getuid ? process.getuid() : -1;

/** our private directory under `base`, made when missing; throws with the reason when it is not usable */
function privateDir(base) {
  const dir = join(base, `tower-${uid}`);
  // one level for a missing ~/.cache; whatever fails here shows in the mkdir below
  try {
    mkdirSync(base, { mode: 0o700 });
  } catch {}
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if (err.code !== 'EEXIST') throw err;
  }
  const st = lstatSync(dir);
  if (!st.isDirectory() || st.isSymbolicLink()) throw new Error(`${dir} is not a directory`);
  if (uid >= 0 && st.uid !== uid) throw new Error(`${dir} belongs to uid ${st.uid}, not ${uid}`);
  if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
  return dir;
}

function load(base) {
  const dir = privateDir(base);
  const file = join(dir, `sshcrypto-${hash}.node`);
  let present = false;
  try {
    present = createHash('sha256').update(readFileSync(file)).digest('hex').slice(0, 16) === hash;
  } catch {}
  if (!present) {
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      writeFileSync(tmp, bytes, { mode: 0o700 });
      renameSync(tmp, file);
    } catch (err) {
      rmSync(tmp, { force: true });
      throw err;
    }
    // other builds' bindings: a process still running one keeps its mapping
    for (const f of readdirSync(dir))
      if (/^sshcrypto-[0-9a-f]{16}\.node$/.test(f) && f !== `sshcrypto-${hash}.node`)
        rmSync(join(dir, f), { force: true });
  }
  const m = { exports: {} };
  process.dlopen(m, file);
  return m.exports;
}

const bases = [...new Set([tmpdir(), process.env.XDG_RUNTIME_DIR, join(homedir(), '.cache')].filter(Boolean))];
const problems = [];
let loaded;
for (const base of bases) {
  try {
    loaded = load(base);
    break;
  } catch (err) {
    problems.push(`${base}: ${err.code || (err.message || String(err)).split('\n')[0]}`);
  }
}
if (!loaded) {
  globalThis.__towerNativeCryptoProblem = `the native crypto binding could not be written and loaded (${problems.join('; ')}); set TMPDIR to a writable directory that allows executables`;
  throw new Error(globalThis.__towerNativeCryptoProblem);
}
// tower's own addition to the binding (patches/ssh2+1.17.0.patch), read by src/observe/memory.ts
if (typeof loaded.trimMalloc === 'function') globalThis.__towerTrimMalloc = loaded.trimMalloc;
module.exports = loaded;
