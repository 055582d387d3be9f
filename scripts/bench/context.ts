// The run's context, handed to every workload: the flags, the three paths to one upstream, the
// figures gathered so far, and every process and part started (closed at the end, whatever happened).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ApiserverPki } from '../../test/support/apiserver-pki.ts';
import { run, TowerProcess } from '../../test/support/tower.ts';
import type { BenchFlags, WorkloadName } from './flags.ts';
import type { OpenSsh } from './openssh.ts';
import { sampled } from './proc.ts';
import type { Tunnel } from './tunnel.ts';
import type { Floor } from './workloads/floor.ts';
import type { Memory } from './workloads/memory.ts';

export type PathName = 'direct' | 'openssh' | 'tunnel';
export const PATHS: readonly PathName[] = ['direct', 'openssh', 'tunnel'];

/** where a client reaches the upstream on one path, and the files of its TLS identity */
export interface Endpoint {
  host: string;
  port: number;
  /** what the path puts before the upstream's own path (the gateway's /clusters/NAME) */
  prefix: string;
  ca: string;
  cert: string;
  key: string;
}

/** one figure on every path, a line of the first table */
export interface Row {
  workload: string;
  figure: string;
  unit: string;
  better: 'higher' | 'lower';
  values: Partial<Record<PathName, number>>;
}

/** CPU seconds and peak RSS (MiB) of a path's two relaying processes during one workload */
export interface Usage {
  workload: string;
  path: PathName;
  cpuA: number;
  cpuB: number;
  peakA: number;
  peakB: number;
}

/** One workload: what --only calls it, how it runs on the context, and its own table if it has one. */
export interface Workload<R = unknown> {
  readonly name: WorkloadName;
  /** the --only names it runs for (its own name when not given) */
  readonly runsFor?: readonly WorkloadName[];
  run(bench: Bench): Promise<R>;
  table?(result: R, bench: Bench): string[];
}

/** A job for the load generator (scripts/bench/load.ts), and what it answers. */
export interface LoadJob {
  mode: 'bulk' | 'small' | 'watch' | 'soak';
  path: string;
  concurrency?: number;
  seconds?: number;
  streams?: number;
  requests?: number;
  freshEvery?: number;
}
export type LoadResult = Partial<
  Record<'bytes' | 'seconds' | 'requests' | 'p50' | 'p99' | 'events' | 'failed', number>
>;

/** the upstream's certificates (its CA, serving and client pairs) and the files they are written to */
export interface UpstreamPki extends ApiserverPki {
  files: { ca: string; cert: string; key: string; clientCert: string; clientKey: string };
}

interface Part {
  close(): Promise<void> | void;
}

const HERE = dirname(fileURLToPath(import.meta.url));
/** a script of the bench's own (the load generator, the upstream, …), to run in a process of its own */
export const benchScript = (name: string): string => join(HERE, name);

/** bounds one load job: a soak of a million requests takes minutes */
const LOAD_TIMEOUT_MS = 60 * 60_000;
/** V8 CPU profiles sampled every 250 µs: a request costs a few hundred µs per process */
const PROFILE_INTERVAL_US = 250;

export class Bench {
  readonly flags: BenchFlags;
  readonly work = mkdtempSync(join(tmpdir(), 'tower-bench-'));
  readonly rows: Row[] = [];
  readonly usage: Usage[] = [];
  /** what each workload returned, by name */
  readonly results = new Map<WorkloadName, unknown>();
  pki!: UpstreamPki;
  upstreamPort = 0;
  openssh!: OpenSsh;
  tunnel!: Tunnel;
  /** one minimal Node HTTPS relay beside the three paths, with --only floor */
  floor: Floor | undefined;
  endpoints!: Record<PathName, Endpoint>;
  /** the two processes that relay bytes on a path (none for direct) */
  relays!: Record<PathName, readonly [number, number] | undefined>;
  /** requests answered in each small run, by concurrency and path (for CPU per request) */
  readonly smallCounts: Record<number, Partial<Record<PathName, number>>> = {};
  memory: Memory | undefined;
  readonly #processes: TowerProcess[] = [];
  readonly #parts: Part[] = [];

  constructor(flags: BenchFlags) {
    this.flags = flags;
  }

  has(name: WorkloadName): boolean {
    return this.flags.only.has(name);
  }

  /** the environment of the measured proxies and agents: with --profile they write CPU profiles */
  get towerEnv(): NodeJS.ProcessEnv {
    const dir = this.flags.profile;
    return dir ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-interval=${PROFILE_INTERVAL_US} --cpu-prof-dir=${dir}` } : {};
  }

  log(msg: string): void {
    process.stderr.write(`bench: ${msg}\n`);
  }

  /** A long-running process whose output can be waited on; killed at the end if still running. */
  spawn(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): TowerProcess {
    const p = new TowerProcess(name, args, env, cmd);
    this.#processes.push(p);
    return p;
  }

  /** A part with processes and files of its own (a Stack, a KubeHost), closed at the end if not before. */
  adopt<T extends Part>(part: T): T {
    this.#parts.push(part);
    return part;
  }

  async dispose(part: Part): Promise<void> {
    const i = this.#parts.indexOf(part);
    if (i >= 0) this.#parts.splice(i, 1);
    await part.close();
  }

  /** Runs one load job in its own process, so that it does not share an event loop with what it measures. */
  async load(ep: Endpoint, job: LoadJob): Promise<LoadResult> {
    const spec = {
      host: ep.host,
      port: ep.port,
      ca: ep.ca,
      cert: ep.cert,
      key: ep.key,
      ...job,
      path: ep.prefix + job.path,
    };
    const r = await run(process.execPath, [benchScript('load.ts'), JSON.stringify(spec)], {
      timeoutMs: LOAD_TIMEOUT_MS,
    });
    if (r.code !== 0) throw new Error(`load ${JSON.stringify(job)} failed: ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as LoadResult;
  }

  /** `fn`'s result; the CPU and peak RSS of the path's relays during it are kept for the second table */
  async measured<T>(workload: string, path: PathName, fn: () => Promise<T>): Promise<T> {
    const pids = this.relays[path];
    if (!pids) return fn();
    const { r, cpu, peak } = await sampled(pids, fn);
    this.usage.push({ workload, path, cpuA: cpu[0]!, cpuB: cpu[1]!, peakA: peak[0]!, peakB: peak[1]! });
    return r;
  }

  /** Closes every part, kills every process still running (by PID) and removes the work directory. */
  async close(): Promise<void> {
    for (const part of this.#parts.splice(0).reverse()) await Promise.resolve(part.close()).catch(() => undefined);
    await Promise.all(this.#processes.map((p) => p.stop('SIGKILL')));
    rmSync(this.work, { recursive: true, force: true });
  }
}
