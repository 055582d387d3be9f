/**
 * A native addon that the single executable carries as a SEA asset (scripts/build.mjs): a binary cannot
 * load a library from inside itself, so the asset is written once to a private directory and loaded from
 * there with process.dlopen. Used for ssh2's crypto binding (src/tunnel/native-crypto.cjs) and tower's own
 * native part (./index.ts).
 *
 * Each place is tried once, without recursion or retries (a recursive mkdir under an unusable TMPDIR such
 * as /proc/x spins for ever in Node 24): $TMPDIR (or /tmp), $XDG_RUNTIME_DIR, ~/.cache; a directory is used
 * only when it is ours (not a link, our uid, mode 0700), so that no other user of a shared /tmp can plant
 * a library for us to load.
 */
import { createHash } from 'node:crypto';
import { chmodSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { getRawAsset, isSea } from 'node:sea';

/** the addon's exports; `missing` when the binary does not carry it; `problem` when it could not be loaded */
export type EmbeddedAddon = { exports: Record<string, unknown> } | { missing: string } | { problem: string };

const uid = process.getuid ? process.getuid() : -1;
const sha = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex').slice(0, 16);

/** our private directory under `base`, made when missing; throws with the reason when it is not usable */
function privateDir(base: string): string {
  const dir = join(base, `tower-${uid}`);
  try {
    mkdirSync(base, { mode: 0o700 });
  } catch {
    // one level for a missing ~/.cache; whatever fails here shows in the mkdir below
  }
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const st = lstatSync(dir);
  if (!st.isDirectory() || st.isSymbolicLink()) throw new Error(`${dir} is not a directory`);
  if (uid >= 0 && st.uid !== uid) throw new Error(`${dir} belongs to uid ${st.uid}, not ${uid}`);
  if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
  return dir;
}

/** `bytes` as `<stem>-<hash>.node` in our directory under `base` (written when not there already), loaded */
function loadFrom(base: string, stem: string, bytes: Buffer, hash: string): Record<string, unknown> {
  const dir = privateDir(base);
  const name = `${stem}-${hash}.node`;
  const file = join(dir, name);
  let present = false;
  try {
    present = sha(readFileSync(file)) === hash;
  } catch {
    // not there yet: written below
  }
  if (!present) {
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      writeFileSync(tmp, bytes, { mode: 0o700 });
      renameSync(tmp, file);
    } catch (err) {
      rmSync(tmp, { force: true });
      throw err;
    }
    // other builds' copies: a process still running one keeps its mapping
    const other = new RegExp(`^${stem}-[0-9a-f]{16}\\.node$`);
    for (const f of readdirSync(dir)) if (other.test(f) && f !== name) rmSync(join(dir, f), { force: true });
  }
  const m = { exports: {} as Record<string, unknown> };
  process.dlopen(m, file);
  return m.exports;
}

/** Loads the asset `name` ("sshcrypto.node"): from the first of the places above that takes it. */
export function loadEmbeddedAddon(name: string): EmbeddedAddon {
  if (!isSea()) return { missing: `${name} is embedded in the tower binary only` };
  let bytes: Buffer;
  try {
    bytes = Buffer.from(getRawAsset(name));
  } catch {
    return { missing: `this build of tower does not carry ${name}` };
  }
  const hash = sha(bytes);
  const stem = name.replace(/\.node$/, '');
  const places = [tmpdir(), process.env.XDG_RUNTIME_DIR, join(homedir(), '.cache')];
  const bases = [...new Set(places.filter((b): b is string => !!b))];
  const problems: string[] = [];
  for (const base of bases) {
    try {
      return { exports: loadFrom(base, stem, bytes, hash) };
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      problems.push(`${base}: ${e.code || (e.message || String(err)).split('\n')[0]}`);
    }
  }
  return { problem: problems.join('; ') };
}
