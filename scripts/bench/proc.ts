// What the bench reads of a process from /proc (CPU, memory, descriptors), waiting for a port, and the
// commands the bench needs.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { waitUntil } from '../../test/support/tower.ts';

const CLK_TCK = 100;

/** user and system CPU seconds of a process, apart */
export function cpuSplit(pid: number): [number, number] {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return [Number(f[11]) / CLK_TCK, Number(f[12]) / CLK_TCK];
}

export function cpuSeconds(pid: number): number {
  const [user, system] = cpuSplit(pid);
  return user + system;
}

/** Starts the process's peak RSS (VmHWM) again from its present RSS. */
export function resetPeak(pid: number): void {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    /* older kernels: lifetime peak */
  }
}

/** fields of /proc/PID/status given in kB, in MiB */
export function statusMiB(pid: number, keys: string[]): number[] {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return keys.map((k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) / 1024);
}
export const peakMiB = (pid: number): number => statusMiB(pid, ['VmHWM'])[0]!;
export const rssMiB = (pid: number): number => statusMiB(pid, ['VmRSS'])[0]!;

export function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/**
 * Resident memory of a process, MiB: all of it, anonymous, and file-backed (its binary and libraries,
 * shared and reclaimable); and its open descriptors.
 */
export interface Resident {
  rss: number;
  anon: number;
  file: number;
  fds: number;
}
export function resident(pid: number): Resident {
  const [rss, anon, shmem, file] = statusMiB(pid, ['VmRSS', 'RssAnon', 'RssShmem', 'RssFile']) as [
    number,
    number,
    number,
    number,
  ];
  return { rss, anon: anon + shmem, file, fds: openFds(pid) };
}

/** `fn`'s result with the CPU seconds and peak RSS (MiB) that each of `pids` spent on it */
export async function sampled<T>(
  pids: readonly number[],
  fn: () => Promise<T>,
): Promise<{ r: T; cpu: number[]; peak: number[] }> {
  for (const p of pids) resetPeak(p);
  const cpu0 = pids.map(cpuSeconds);
  const r = await fn();
  return { r, cpu: pids.map((p, i) => cpuSeconds(p) - cpu0[i]!), peak: pids.map(peakMiB) };
}

/** Commands the bench runs ([command, Debian package]), from Debian's archive when missing. */
export function ensureTools(tools: [string, string][], log: (msg: string) => void): void {
  const have = (c: string) => spawnSync('sh', ['-c', `command -v ${c} || test -x /usr/sbin/${c}`]).status === 0;
  const missing = tools.filter(([c]) => !have(c)).map(([, p]) => p);
  if (missing.length === 0) return;
  log(`installing ${missing.join(', ')} with apt-get`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  spawnSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env });
  const r = spawnSync('apt-get', ['install', '-y', '-qq', ...missing], { stdio: 'ignore', env });
  if (r.status !== 0) throw new Error(`cannot install ${missing.join(', ')} (apt-get failed)`);
}

export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
export const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Whether something accepts connections on a loopback port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}
export function waitPort(port: number, timeoutMs = 15_000): Promise<boolean> {
  return waitUntil(`something to listen on ${port}`, () => listening(port), timeoutMs, 50);
}
