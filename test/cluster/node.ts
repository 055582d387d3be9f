/**
 * The real node the cluster suite runs on (scripts/test-node.sh, started by `npm run test:cluster`): its
 * admin kubeconfig, kubectl against it, tower's commands as a user runs them, the gateway as a user on this
 * machine reaches it, and what the kernel says of the pods' processes.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { run, tower, type RunResult } from '../support/tower.ts';

const dir = process.env.TOWER_NODE_DIR;
if (!dir) throw new Error('TOWER_NODE_DIR is not set: run the cluster suite with `npm run test:cluster`');
export const NODE_DIR = dir;
export const ADMIN = join(NODE_DIR, 'cp', 'admin.kubeconfig');
export const IMAGE = process.env.TOWER_IMAGE ?? 'tower:0.1.0';
export const NS = 'kubesphere-system';

/** kubectl as the node's admin */
export function k(args: string[], input?: string, timeoutMs = 120_000): Promise<RunResult> {
  return run('kubectl', ['--kubeconfig', ADMIN, ...args], { input, timeoutMs });
}

/** kubectl as the node's admin, which must succeed; its stdout */
export async function kOk(args: string[], input?: string, timeoutMs?: number): Promise<string> {
  const r = await k(args, input, timeoutMs);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** a tower command that must succeed; its stdout */
export async function towerOk(args: string[]): Promise<string> {
  const r = await tower(args);
  if (r.code !== 0) throw new Error(`tower ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

/** `tower install ...` piped to `kubectl apply -f -` */
export async function install(args: string[]): Promise<string> {
  return kOk(['apply', '-f', '-'], await towerOk(['install', ...args, '--image', IMAGE]));
}

/**
 * An object as kubectl prints it: read field by field by tests that fail where a field is missing, so
 * typing every Kubernetes kind here would add nothing.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any;

/** `kubectl get … -o json` as the node's admin */
export async function json(args: string[]): Promise<Json> {
  return JSON.parse(await kOk([...args, '-o', 'json']));
}

/**
 * A kubeconfig that a user of this machine runs: the one tower printed, with its server's host (a Service's DNS
 * name, which only pods resolve) replaced by the Service's ClusterIP, and the name kept for TLS.
 */
export async function fromThisMachine(kubeconfig: string, path: string): Promise<string> {
  const kc = parse(kubeconfig);
  for (const c of kc.clusters) {
    const url = new URL(c.cluster.server);
    const [name, ns] = url.hostname.split('.');
    c.cluster['tls-server-name'] = url.hostname;
    url.hostname = (await json(['get', 'service', '-n', ns, name])).spec.clusterIP;
    c.cluster.server = url.toString().replace(/\/$/, '');
  }
  writeFileSync(path, stringify(kc), { mode: 0o600 });
  return path;
}

export function kubectl(kubeconfig: string, args: string[], input?: string, timeoutMs = 60_000): Promise<RunResult> {
  return run('kubectl', ['--kubeconfig', kubeconfig, ...args], { input, timeoutMs });
}

/** A process of a pod's container, as the kernel sees it. */
export interface ContainerProcess {
  pid: number;
  uid: number;
  /** the mount options of its root filesystem */
  rootOptions: string[];
  /** its memory cgroup (v1) directory */
  memoryCgroup: string;
  args: string[];
}

/** every process on this machine that runs `command` (its argv[0]'s base name) in a pod */
export function podProcesses(command: string): ContainerProcess[] {
  const found: ContainerProcess[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const args = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').filter(Boolean);
      if (args[0]?.split('/').at(-1) !== command) continue;
      const cgroup = readFileSync(`/proc/${e}/cgroup`, 'utf8');
      const memory = /^\d+:memory:(\/kubepods\S*)$/m.exec(cgroup);
      if (!memory) continue;
      const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${e}/status`, 'utf8'))![1]);
      const root = readFileSync(`/proc/${e}/mountinfo`, 'utf8')
        .split('\n')
        .map((l) => l.split(' '))
        .find((f) => f[4] === '/');
      found.push({
        pid: Number(e),
        uid,
        rootOptions: root ? root[5].split(',') : [],
        memoryCgroup: join('/sys/fs/cgroup/memory', memory[1]),
        args,
      });
    } catch {
      // the process ended meanwhile
    }
  }
  return found;
}

/** a value of a cgroup v1 memory file, in bytes */
export function memoryValue(cgroup: string, file: string): number {
  return Number(readFileSync(join(cgroup, file), 'utf8').trim());
}

/** the pod UID a container's cgroup path names */
export function podUid(cgroup: string): string | undefined {
  return /pod([0-9a-f-]{36})/.exec(cgroup)?.[1];
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
