import {
  closeSync,
  constants,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parse as parseYaml } from 'yaml';
import { readRegularFile } from '../../config/files.ts';
import { StoreError } from '../../errors.ts';

const LOCK_WAIT_MS = 10_000;
/** a record (a cluster, a status, the proxy's addresses) is a few hundred bytes; a file far bigger is not one */
const MAX_RECORD_BYTES = 1024 * 1024;
const LOCK_STALE_MS = 30_000;
const LOCK_RETRY_MS = 15;

/** What a YAML file holds: `missing` when there is no file, `problem` when it cannot be read or parsed. */
export interface YamlRead {
  doc?: unknown;
  problem?: string;
  missing?: boolean;
}

/**
 * The data dir of the file mode: its layout, and the one way everything in it is written. Writes are
 * atomic (temp file, fsync, rename) and serialized by a lock file, so that `tower token` can run
 * beside a live proxy; secrets are 0600.
 */
export class DataDir {
  readonly dir: string;
  /** the dir as messages show it ("~/.tower") */
  readonly location: string;
  readonly clustersDir: string;
  readonly statusDir: string;

  constructor(dir: string) {
    this.dir = dir;
    this.location = dir.startsWith(homedir() + '/') ? '~' + dir.slice(homedir().length) : dir;
    this.clustersDir = join(dir, 'clusters');
    this.statusDir = join(dir, 'status');
    try {
      for (const d of [dir, this.clustersDir, this.statusDir]) mkdirSync(d, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new StoreError(
        'EDATADIR',
        `cannot create data dir ${dir}: ${(err as Error).message} (choose another with --data-dir or TOWER_HOME)`,
      );
    }
  }

  /** The YAML document at `path`. */
  async readYaml(path: string, maxBytes = MAX_RECORD_BYTES): Promise<YamlRead> {
    const read = await readRegularFile(path, maxBytes);
    if (!('text' in read)) return read;
    try {
      return { doc: parseYaml(read.text) ?? undefined };
    } catch (err) {
      return { problem: `is not YAML (${(err as Error).message.split('\n')[0]})` };
    }
  }

  /** temp file, fsync, rename, fsync of the directory: readers see the old or the new file, whole */
  writeFile(path: string, content: string, secret: boolean): void {
    const tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, secret ? 0o600 : 0o644);
    try {
      writeSync(fd, content);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    const dfd = openSync(join(path, '..'), 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  }

  /** Runs `fn` holding the data dir's lock (other tower processes wait for it, at most LOCK_WAIT_MS). */
  async locked<T>(fn: () => Promise<T>): Promise<T> {
    const lock = join(this.dir, '.lock');
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (;;) {
      try {
        const fd = openSync(lock, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
        writeSync(fd, String(process.pid));
        closeSync(fd);
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        if (lockIsStale(lock)) {
          rmSync(lock, { force: true });
          continue;
        }
        if (Date.now() > deadline) {
          throw new StoreError(
            'ELOCKED',
            `${this.location} is locked by another tower process (${lock}); if none runs, remove that file`,
          );
        }
        await sleep(LOCK_RETRY_MS);
      }
    }
    try {
      return await fn();
    } finally {
      rmSync(lock, { force: true });
    }
  }
}

export function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** whether `pid` (as a data-dir file says it) names a live process; nonsense values name none */
export function pidAlive(pid: unknown): boolean {
  if (!Number.isSafeInteger(pid) || (pid as number) <= 0) return false;
  try {
    process.kill(pid as number, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

function lockIsStale(lock: string): boolean {
  try {
    const pid = Number(readFileSync(lock, 'utf8'));
    if (Number.isInteger(pid) && pid > 0 && !pidAlive(pid)) return true;
    return Date.now() - statSync(lock).mtimeMs > LOCK_STALE_MS;
  } catch {
    return false;
  }
}
