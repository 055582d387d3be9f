// Resident memory of the idle relays (tower's proxy and agent, ssh and sshd; the floor's Node relay),
// before any request and again after the bulk, small, hops and watch workloads, beside the same
// Node 24 running nothing: the floor under any program on this runtime.
import type { Bench } from '../context.ts';
import { resident, sleep, type Resident } from '../proc.ts';
import { fmt } from '../format.ts';

const IDLE_MEMORY_WAIT_MS = 3000;
/** after load: longer than one of the relays' 30 s malloc trim checks (src/observe/memory.ts) */
export const LOADED_MEMORY_WAIT_MS = 35_000;
/** the workloads after which the relays' memory is taken again */
export const LOADING = ['bulk', 'small', 'hops', 'watch'] as const;

export interface Memory {
  start: Record<string, Resident>;
  loaded?: Record<string, Resident>;
}

export async function idleMemory(
  bench: Bench,
  withRuntime: boolean,
  waitMs = IDLE_MEMORY_WAIT_MS,
): Promise<Record<string, Resident>> {
  const runtime = withRuntime
    ? bench.spawn('node', process.execPath, ['-e', 'setInterval(() => {}, 60_000)'])
    : undefined;
  await sleep(waitMs);
  const [proxy, agent] = bench.relays.tunnel!;
  const [ssh, sshd] = bench.relays.openssh!;
  const out: Record<string, Resident> = {
    proxy: resident(proxy),
    agent: resident(agent),
    ssh: resident(ssh),
    sshd: resident(sshd),
  };
  if (bench.floor) out.relay = resident(bench.floor.pid);
  if (runtime) {
    out.runtime = resident(runtime.pid);
    runtime.child.kill('SIGTERM');
  }
  return out;
}

const LABELS = [
  ['proxy', 'tower proxy'],
  ['agent', 'tower agent'],
  ['ssh', 'ssh'],
  ['sshd', 'sshd (the relaying process)'],
  ['relay', 'one minimal Node HTTPS relay (the floor workload)'],
  ['runtime', 'Node 24 running nothing (the runtime tower is packed with)'],
] as const;

export function memoryTable(memory: Memory): string[] {
  const cell = (m?: Resident) => (m ? `${fmt(m.rss)} (${fmt(m.anon)} + ${fmt(m.file)}), ${m.fds} fds` : '–');
  // after the workloads the proxy's pool still holds idle channels (each an upstream TLS connection at
  // the agent) for 90 s
  const lines = [
    '| resident memory, MiB: all (anonymous + file-backed), open descriptors | idle, before any request | ' +
      `idle ${LOADED_MEMORY_WAIT_MS / 1000} s after the bulk, small, hops and watch workloads ` +
      '(pooled connections open) |',
    '| --- | ---: | ---: |',
  ];
  for (const [k, label] of LABELS) {
    if (memory.start[k]) lines.push(`| ${label} | ${cell(memory.start[k])} | ${cell(memory.loaded?.[k])} |`);
  }
  return lines;
}
