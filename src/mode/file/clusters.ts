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
  watch,
  writeSync,
  type FSWatcher,
} from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { StoreError } from '../errors.ts';
import { log } from '../observe/log.ts';
import { assertClusterName, clusterNameProblem } from './names.ts';
import type {
  Cluster,
  ClusterEvent,
  ClusterStatus,
  ClusterStore,
  Closer,
  KeyMaterial,
  KeyMaterialKind,
  ProxyRecord,
} from './types.ts';

const LOCK_WAIT_MS = 10_000;
const LOCK_STALE_MS = 30_000;
const LOCK_RETRY_MS = 15;
const WATCH_POLL_MS = 500;
/** a full scan of the cluster files at most this often while inotify works */
const FULL_SCAN_MS = 30_000;
const KEY_FILES: Record<KeyMaterialKind, string[]> = { ca: ['ca.crt', 'ca.key'], 'ssh-host-key': ['ssh_host_key'] };
const PUBLIC_FILES = new Set(['ca.crt']);

/** clusters/<name>.yaml: the revision is a generation counter */
interface ClusterFile {
  name: string;
  token: string;
  createdAt: string;
  generation: number;
}

function fromFile(f: ClusterFile): Cluster {
  return { name: f.name, token: f.token, createdAt: f.createdAt, revision: String(f.generation) };
}

/**
 * The embedded store: plain files under the data dir. Writes are atomic (temp file, fsync, rename)
 * and serialized by a lock file, so `tower token` can run beside a live proxy; secrets are 0600.
 */
export class FileStore implements ClusterStore {
  readonly kind = 'file';
  readonly dir: string;
  readonly location: string;
  #clustersDir: string;
  #statusDir: string;
  #closers = new Set<Closer>();

  constructor(dir: string) {
    this.dir = dir;
    this.location = dir.startsWith(homedir() + '/') ? '~' + dir.slice(homedir().length) : dir;
    this.#clustersDir = join(dir, 'clusters');
    this.#statusDir = join(dir, 'status');
    try {
      for (const d of [dir, this.#clustersDir, this.#statusDir]) mkdirSync(d, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new StoreError(
        'EDATADIR',
        `cannot create data dir ${dir}: ${(err as Error).message} (choose another with --data-dir or TOWER_HOME)`,
      );
    }
  }

  async get(name: string): Promise<Cluster | undefined> {
    assertClusterName(name);
    return this.#readCluster(name);
  }

  async list(): Promise<Cluster[]> {
    const out: Cluster[] = [];
    for (const f of await readdir(this.#clustersDir)) {
      const name = clusterFileName(f);
      if (!name) continue;
      const c = await this.#readCluster(name);
      if (c) out.push(c);
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async create(name: string, token: string): Promise<Cluster> {
    assertClusterName(name);
    return this.#locked(async () => {
      if (await this.#readCluster(name))
        throw new StoreError('EEXIST', `cluster "${name}" already exists in ${this.location}`);
      const record: ClusterFile = { name, token, createdAt: new Date().toISOString(), generation: 1 };
      this.#writeFile(join(this.#clustersDir, `${name}.yaml`), toYaml(record), true);
      return fromFile(record);
    });
  }

  /** An unusable record (`problem` set) has revision "0": an update with that revision rewrites it. */
  async update(cluster: Cluster): Promise<Cluster> {
    assertClusterName(cluster.name);
    return this.#locked(async () => {
      const current = await this.#readCluster(cluster.name);
      if (!current)
        throw new StoreError(
          'ENOTFOUND',
          `cluster "${cluster.name}" not found in ${this.location} (create it with: tower token ${cluster.name})`,
        );
      if (current.revision !== cluster.revision) {
        throw new StoreError(
          'ECONFLICT',
          `cluster "${cluster.name}" changed while it was being updated (revision ${current.revision}, not ${cluster.revision}); retry`,
        );
      }
      const createdAt = current.problem ? new Date().toISOString() : cluster.createdAt;
      const next: ClusterFile = {
        name: cluster.name,
        token: cluster.token,
        createdAt,
        generation: Number(current.revision) + 1,
      };
      this.#writeFile(join(this.#clustersDir, `${cluster.name}.yaml`), toYaml(next), true);
      return fromFile(next);
    });
  }

  /** Unregisters `name`: its record and status go, and a running proxy closes its sessions at the next scan. */
  async remove(name: string): Promise<boolean> {
    assertClusterName(name);
    return this.#locked(async () => {
      const path = join(this.#clustersDir, `${name}.yaml`);
      const existed = (() => {
        try {
          statSync(path);
          return true;
        } catch {
          return false;
        }
      })();
      rmSync(path, { force: true });
      rmSync(join(this.#statusDir, `${name}.yaml`), { force: true });
      return existed;
    });
  }

  /** What the proxy last wrote about `name`'s agents; undefined when nothing (or nothing usable) was. */
  async readStatus(name: string): Promise<ClusterStatus | undefined> {
    assertClusterName(name);
    const r = await this.#readYaml(join(this.#statusDir, `${name}.yaml`));
    const d = r.doc as Record<string, unknown> | null | undefined;
    if (r.problem || typeof d !== 'object' || d === null || typeof d.connected !== 'boolean') return undefined;
    // a file like any other: each field is kept only when it is what the proxy writes
    const text = (v: unknown, max: number) =>
      typeof v === 'string' && v.length <= max && /^[\x20-\x7e]*$/.test(v) ? v : undefined;
    const time = (v: unknown) => {
      const t = text(v, 40);
      return t && !Number.isNaN(Date.parse(t)) ? t : undefined;
    };
    return {
      connected: d.connected,
      agents: Number.isSafeInteger(d.agents) && (d.agents as number) >= 0 ? (d.agents as number) : 0,
      since: time(d.since),
      lastSeen: time(d.lastSeen),
      agentVersions: text(d.agentVersions, 1024),
      agentAddresses: text(d.agentAddresses, 1024),
    };
  }

  async writeStatus(name: string, status: ClusterStatus): Promise<void> {
    assertClusterName(name);
    // only the proxy writes status, so no lock: the rename alone keeps readers consistent
    this.#writeFile(join(this.#statusDir, `${name}.yaml`), toYaml(status), false);
  }

  async readProxyRecord(): Promise<ProxyRecord | undefined> {
    const path = join(this.dir, 'proxy.yaml');
    const r = await this.#readYaml(path);
    if (r.missing || (!r.problem && r.doc === undefined)) return undefined;
    const d = r.doc as Partial<ProxyRecord> | null;
    const wellFormed =
      typeof d === 'object' &&
      d !== null &&
      typeof d.agentUrl === 'string' &&
      typeof d.gatewayUrl === 'string' &&
      typeof d.hostKeyFingerprint === 'string';
    if (r.problem || !wellFormed) {
      // only addresses for printing: commands fall back to the defaults
      log.warn('ignoring an unusable file in the data dir', { path, why: r.problem ?? 'is malformed' });
      return undefined;
    }
    return d as ProxyRecord;
  }

  async writeProxyRecord(record: ProxyRecord): Promise<void> {
    await this.#locked(async () => this.#writeFile(join(this.dir, 'proxy.yaml'), toYaml(record), false));
  }

  async loadOrCreateKeyMaterial(kind: KeyMaterialKind, create: () => Promise<KeyMaterial>): Promise<KeyMaterial> {
    const files = KEY_FILES[kind];
    const read = () => {
      const present = files.filter((f) => exists(join(this.dir, f)));
      if (present.length === 0) return undefined;
      if (present.length !== files.length) {
        throw new StoreError(
          'EKEYMATERIAL',
          `${this.location} holds ${present.join(', ')} but not ${files.filter((f) => !present.includes(f)).join(', ')}; restore the missing file or remove the others to start afresh`,
        );
      }
      return Object.fromEntries(files.map((f) => [f, readFileSync(join(this.dir, f), 'utf8')]));
    };
    const existing = read();
    if (existing) return existing;
    return this.#locked(async () => {
      const again = read();
      if (again) return again;
      const made = await create();
      for (const f of files) {
        if (typeof made[f] !== 'string') throw new Error(`key material for ${kind} lacks ${f}`);
        this.#writeFile(join(this.dir, f), made[f]!, !PUBLIC_FILES.has(f));
      }
      return made;
    });
  }

  async claim(): Promise<Closer> {
    const path = join(this.dir, 'proxy.lock');
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
        writeSync(fd, String(process.pid));
        closeSync(fd);
        return { close: () => rmSync(path, { force: true }) };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const holder = Number(readFileSync(path, 'utf8'));
        // a holder with our own pid is a previous life of this container (pid 1 again)
        if (holder !== process.pid && pidAlive(holder)) {
          throw new StoreError(
            'EBUSY',
            `another proxy (pid ${holder}) serves ${this.location}; stop it, or give this one its own --data-dir`,
          );
        }
        rmSync(path, { force: true }); // left by a proxy that died
      }
    }
    throw new StoreError('EBUSY', `cannot claim ${path}`);
  }

  /**
   * Changes reach the proxy within a second at a cost that does not grow with the number of
   * clusters: inotify names the file that changed, and a poll of the directory's own stamp (one
   * stat) catches renames, i.e. every write of tower's; a full scan runs only then, and every
   * FULL_SCAN_MS for what both could miss (an in-place edit on a network file system).
   */
  watch(onEvent: (event: ClusterEvent) => void): Closer {
    const seen = new Map<string, { stamp: string; cluster: Cluster }>();
    let closed = false;
    /** cluster names to look at, '' for a full scan; worked off one at a time, a full scan first */
    const queue = new Set<string>();
    let working = false;
    const look = async (name: string, st: { ino: number; mtimeMs: number; size: number } | undefined) => {
      const prev = seen.get(name);
      if (!st) {
        if (prev) {
          seen.delete(name);
          onEvent({ type: 'deleted', name });
        }
        return;
      }
      const stamp = `${st.ino}:${st.mtimeMs}:${st.size}`;
      if (prev?.stamp === stamp) return;
      const cluster = await this.#readCluster(name);
      // gone between stat and read: the next look reports the deletion
      if (!cluster || closed) return;
      seen.set(name, { stamp, cluster });
      // an unusable record is an event too: the proxy stops trusting the token it had
      if (!prev) onEvent({ type: 'added', cluster });
      else if (
        prev.cluster.revision !== cluster.revision ||
        prev.cluster.token !== cluster.token ||
        prev.cluster.problem !== cluster.problem
      )
        onEvent({ type: 'modified', cluster });
    };
    const scanAll = async () => {
      const names = new Set<string>();
      for (const f of await readdir(this.#clustersDir)) {
        const name = clusterFileName(f);
        if (!name || closed) continue;
        names.add(name);
        await look(name, await stat(join(this.#clustersDir, f)).catch(() => undefined));
      }
      for (const name of [...seen.keys()]) if (!names.has(name) && !closed) await look(name, undefined);
    };
    const work = async () => {
      if (working) return;
      working = true;
      try {
        while (queue.size > 0 && !closed) {
          const next = queue.has('') ? '' : queue.values().next().value!;
          queue.delete(next);
          try {
            if (next === '') await scanAll();
            else await look(next, await stat(join(this.#clustersDir, `${next}.yaml`)).catch(() => undefined));
          } catch (err) {
            log.warn('cannot scan the cluster store', { dir: this.#clustersDir, err: (err as Error).message });
          }
        }
      } finally {
        working = false;
      }
    };
    const enqueue = (name: string) => {
      queue.add(name);
      void work();
    };
    let watcher: FSWatcher | undefined;
    try {
      watcher = watch(this.#clustersDir, { persistent: false }, (_event, file) => {
        const name = file ? clusterFileName(String(file)) : '';
        // temporary files of an atomic write are not clusters; their rename names the cluster's file
        if (name !== undefined) enqueue(name);
      });
      watcher.on('error', () => {
        watcher?.close();
        watcher = undefined;
      });
    } catch {
      watcher = undefined; // the polls below still pick changes up
    }
    let dirStamp = '';
    let lastFull = Date.now();
    const poll = setInterval(() => {
      // without inotify, a file edited in place shows only in a full scan: then one every poll
      const due = !watcher || Date.now() - lastFull >= FULL_SCAN_MS;
      stat(this.#clustersDir)
        .then(
          (st) => `${st.ino}:${st.mtimeMs}`,
          () => '',
        )
        .then((stamp) => {
          if (stamp === dirStamp && !due) return;
          dirStamp = stamp;
          lastFull = Date.now();
          enqueue('');
        });
    }, WATCH_POLL_MS);
    poll.unref();
    enqueue('');
    const closer = {
      close: () => {
        closed = true;
        clearInterval(poll);
        watcher?.close();
        this.#closers.delete(closer);
      },
    };
    this.#closers.add(closer);
    return closer;
  }

  close(): void {
    for (const c of [...this.#closers]) c.close();
  }

  /** undefined when there is no record; a Cluster with `problem` when there is one that cannot be used */
  async #readCluster(name: string): Promise<Cluster | undefined> {
    const path = join(this.#clustersDir, `${name}.yaml`);
    const broken = (why: string): Cluster => ({
      name,
      token: '',
      createdAt: '',
      revision: '0',
      problem: `${this.location}/clusters/${name}.yaml ${why}`,
    });
    const { doc, problem, missing } = await this.#readYaml(path);
    if (missing) return undefined;
    if (problem) return broken(problem);
    if (doc === undefined) return broken('is empty');
    const c = doc as Partial<ClusterFile>;
    if (
      typeof c !== 'object' ||
      c === null ||
      c.name !== name ||
      typeof c.token !== 'string' ||
      !/^[0-9a-f]{64}$/.test(c.token) ||
      typeof c.generation !== 'number'
    ) {
      return broken('is malformed (want name, a token of 64 hex digits and generation)');
    }
    return fromFile({ name: c.name, token: c.token, createdAt: String(c.createdAt ?? ''), generation: c.generation });
  }

  /** The YAML document at `path`; `missing` when there is no file, `problem` when it cannot be read or parsed. */
  async #readYaml(path: string): Promise<{ doc?: unknown; problem?: string; missing?: boolean }> {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return { missing: true };
      return { problem: `cannot be read: ${code ?? (err as Error).message}` };
    }
    try {
      return { doc: parseYaml(text) ?? undefined };
    } catch (err) {
      return { problem: `is not YAML (${(err as Error).message.split('\n')[0]})` };
    }
  }

  /** temp file, fsync, rename, fsync of the directory: readers see the old or the new file, whole */
  #writeFile(path: string, content: string, secret: boolean): void {
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

  async #locked<T>(fn: () => Promise<T>): Promise<T> {
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

function clusterFileName(file: string): string | undefined {
  if (!file.endsWith('.yaml')) return undefined;
  const name = file.slice(0, -'.yaml'.length);
  return clusterNameProblem(name) ? undefined : name;
}

function exists(path: string): boolean {
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
