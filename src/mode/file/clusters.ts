import { rmSync, watch, type FSWatcher } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { assertClusterName, clusterNameProblem } from '../../config/names.ts';
import { ConflictError, NotFoundError, StoreError } from '../../errors.ts';
import { log } from '../../observe/log.ts';
import type { Cluster, ClusterEvent, ClusterRecords, Closer } from '../mode.ts';
import { DataDir, exists } from './data-dir.ts';

const WATCH_POLL_MS = 500;
/** a full scan of the cluster files at most this often while inotify works */
const FULL_SCAN_MS = 30_000;

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

/** The file mode's registry: one file per cluster, clusters/<name>.yaml in the data dir. */
export class FileClusters implements ClusterRecords {
  readonly dir: string;
  readonly location: string;
  #data: DataDir;
  #closers = new Set<Closer>();

  /** `dir`: the data dir's path, or the DataDir that the mode's other parts share */
  constructor(dir: string | DataDir) {
    this.#data = typeof dir === 'string' ? new DataDir(dir) : dir;
    this.dir = this.#data.dir;
    this.location = this.#data.location;
  }

  async get(name: string): Promise<Cluster | undefined> {
    assertClusterName(name);
    return this.#readCluster(name);
  }

  async list(): Promise<Cluster[]> {
    const out: Cluster[] = [];
    for (const f of await readdir(this.#data.clustersDir)) {
      const name = clusterFileName(f);
      if (!name) continue;
      const c = await this.#readCluster(name);
      if (c) out.push(c);
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async create(name: string, token: string): Promise<Cluster> {
    assertClusterName(name);
    return this.#data.locked(async () => {
      if (await this.#readCluster(name))
        throw new StoreError('EEXIST', `cluster "${name}" already exists in ${this.location}`);
      const record: ClusterFile = { name, token, createdAt: new Date().toISOString(), generation: 1 };
      this.#data.writeFile(this.#path(name), toYaml(record), true);
      return fromFile(record);
    });
  }

  /** An unusable record (`problem` set) has revision "0": an update with that revision rewrites it. */
  async update(cluster: Cluster): Promise<Cluster> {
    assertClusterName(cluster.name);
    return this.#data.locked(async () => {
      const current = await this.#readCluster(cluster.name);
      if (!current)
        throw new NotFoundError(
          `cluster "${cluster.name}" not found in ${this.location} (create it with: tower token ${cluster.name})`,
        );
      if (current.revision !== cluster.revision) {
        throw new ConflictError(
          `cluster "${cluster.name}" changed while it was being updated ` +
            `(revision ${current.revision}, not ${cluster.revision}); retry`,
        );
      }
      const createdAt = current.problem ? new Date().toISOString() : cluster.createdAt;
      const next: ClusterFile = {
        name: cluster.name,
        token: cluster.token,
        createdAt,
        generation: Number(current.revision) + 1,
      };
      this.#data.writeFile(this.#path(cluster.name), toYaml(next), true);
      return fromFile(next);
    });
  }

  /** Its record and status go, and a running proxy closes its sessions at the next scan. */
  async delete(name: string): Promise<void> {
    assertClusterName(name);
    const existed = await this.#data.locked(async () => {
      const path = this.#path(name);
      const existed = exists(path);
      rmSync(path, { force: true });
      rmSync(join(this.#data.statusDir, `${name}.yaml`), { force: true });
      return existed;
    });
    if (!existed) throw new NotFoundError(`cluster "${name}" not found in ${this.location} (see: tower clusters)`);
  }

  /**
   * Changes reach the proxy within a second at a cost that does not grow with the number of
   * clusters: inotify names the file that changed, and a poll of the directory's own stamp (one
   * stat) catches renames, i.e. every write of tower's; a full scan runs only then, and every
   * FULL_SCAN_MS for what both could miss (an in-place edit on a network file system).
   */
  watch(onEvent: (event: ClusterEvent) => void): Closer {
    const clustersDir = this.#data.clustersDir;
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
      for (const f of await readdir(clustersDir)) {
        const name = clusterFileName(f);
        if (!name || closed) continue;
        names.add(name);
        await look(name, await stat(join(clustersDir, f)).catch(() => undefined));
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
            else await look(next, await stat(this.#path(next)).catch(() => undefined));
          } catch (err) {
            log.warn('cannot scan the cluster store', { dir: clustersDir, err: (err as Error).message });
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
      watcher = watch(clustersDir, { persistent: false }, (_event, file) => {
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
      stat(clustersDir)
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

  /** Stops every watch. */
  close(): void {
    for (const c of [...this.#closers]) c.close();
  }

  #path(name: string): string {
    return join(this.#data.clustersDir, `${name}.yaml`);
  }

  /** undefined when there is no record; a Cluster with `problem` when there is one that cannot be used */
  async #readCluster(name: string): Promise<Cluster | undefined> {
    const broken = (why: string): Cluster => ({
      name,
      token: '',
      createdAt: '',
      revision: '0',
      problem: `${this.location}/clusters/${name}.yaml ${why}`,
    });
    const { doc, problem, missing } = await this.#data.readYaml(this.#path(name));
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
}

function clusterFileName(file: string): string | undefined {
  if (!file.endsWith('.yaml')) return undefined;
  const name = file.slice(0, -'.yaml'.length);
  return clusterNameProblem(name) ? undefined : name;
}
