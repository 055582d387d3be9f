// The bench as a program: it measures one workload set along three paths to the same local HTTPS
// upstream, interleaved:
//   direct   client → upstream
//   openssh  client → ssh -L (Debian's OpenSSH, aes128-gcm@openssh.com) → upstream
//   tunnel   client → tower gateway (client cert) → SSH channel → tower agent → upstream
// and prints each figure with the ratios tunnel/direct and tunnel/openssh, plus CPU seconds and peak RSS
// of the two relaying processes (tower: proxy and agent; OpenSSH: ssh and sshd). Then the workloads that
// measure tower alone, each with its own table. One file per workload, in workloads/.
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { issueApiserverPki } from '../../test/support/apiserver-pki.ts';
import { ensureBuilt } from '../lib.mjs';
import { Bench, benchScript, type UpstreamPki, type Workload } from './context.ts';
import type { BenchFlags } from './flags.ts';
import { startOpenSsh } from './openssh.ts';
import { report } from './report.ts';
import { Tunnel } from './tunnel.ts';
import { bulk } from './workloads/bulk.ts';
import { clusters } from './workloads/clusters.ts';
import { cold } from './workloads/cold.ts';
import { startFloor } from './workloads/floor.ts';
import { hops } from './workloads/hops.ts';
import { idle } from './workloads/idle.ts';
import { idleMemory, LOADED_MEMORY_WAIT_MS, LOADING } from './workloads/memory.ts';
import { metrics } from './workloads/metrics.ts';
import { outage } from './workloads/outage.ts';
import { policy } from './workloads/policy.ts';
import { replicas } from './workloads/replicas.ts';
import { scale } from './workloads/scale.ts';
import { small } from './workloads/small.ts';
import { soak } from './workloads/soak.ts';
import { stalled } from './workloads/stalled.ts';
import { watch } from './workloads/watch.ts';

/** the workloads on the three paths, after which the relays' memory is taken again */
const ON_PATHS: Workload[] = [bulk, small, hops, watch];
/** then the others, on tower alone; their tables follow in this order */
const ON_TOWER: Workload[] = [cold, soak, idle, scale, outage, metrics, clusters, replicas, stalled, policy];
const WORKLOADS = [...ON_PATHS, ...ON_TOWER];

/** The upstream's CA, its serving certificate and a client certificate it accepts, in files. */
async function upstreamPki(bench: Bench): Promise<UpstreamPki> {
  const pki = await issueApiserverPki('bench-upstream', { user: 'bench', groups: ['system:masters'] });
  const file = (name: string, pem: string) => {
    const path = join(bench.work, name);
    writeFileSync(path, pem);
    return path;
  };
  const files = {
    ca: file('up-ca.crt', pki.caPem),
    cert: file('up.crt', pki.serving.cert),
    key: file('up.key', pki.serving.key),
    clientCert: file('client.crt', pki.client.cert),
    clientKey: file('client.key', pki.client.key),
  };
  return { ...pki, files };
}

/** The upstream (scripts/bench/upstream.ts, a process of its own), the three paths to it and the floor. */
async function setUp(bench: Bench): Promise<void> {
  bench.pki = await upstreamPki(bench);
  const { files } = bench.pki;
  const upstream = bench.spawn('upstream', process.execPath, [
    benchScript('upstream.ts'),
    files.cert,
    files.key,
    files.ca,
  ]);
  bench.upstreamPort = Number((await upstream.waitFor(/^(\d+)$/m))[1]);
  bench.openssh = await startOpenSsh(bench, bench.upstreamPort);
  if (bench.flags.profile) mkdirSync(bench.flags.profile, { recursive: true });
  // a binary just written (npm run build) sits in the page cache in large folios, and every process
  // then maps far more of it (68 MiB file-backed against 45-50): read it from disk, as a deployment does
  spawnSync('dd', [`if=${bench.flags.binary}`, 'iflag=nocache', 'count=0', 'status=none']);
  bench.tunnel = await Tunnel.start(bench, 'bench');
  const client = { ca: files.ca, cert: files.clientCert, key: files.clientKey };
  bench.endpoints = {
    direct: { host: '127.0.0.1', port: bench.upstreamPort, prefix: '', ...client },
    openssh: { host: '127.0.0.1', port: bench.openssh.port, prefix: '', ...client },
    tunnel: bench.tunnel.endpoint,
  };
  bench.relays = {
    direct: undefined,
    openssh: bench.openssh.pids,
    tunnel: [bench.tunnel.proxy.pid, bench.tunnel.agent.pid],
  };
  if (bench.has('floor')) bench.floor = await startFloor(bench);
  bench.log(
    `upstream :${bench.upstreamPort}, ssh -L :${bench.openssh.port}, gateway :${bench.tunnel.gatewayPort}; ` +
      `${bench.flags.quick ? 'quick run' : 'full run'}`,
  );
}

async function runWorkload(bench: Bench, w: Workload<unknown>): Promise<void> {
  if ((w.runsFor ?? [w.name]).some((n) => bench.has(n))) bench.results.set(w.name, await w.run(bench));
}

/** Runs the bench; prints the report on stdout (and writes --json). */
export async function runBench(flags: BenchFlags): Promise<void> {
  const t0 = Date.now();
  if (!flags.binaryGiven) ensureBuilt();
  const bench = new Bench(flags);
  try {
    await setUp(bench);
    bench.memory = { start: await idleMemory(bench, true) };
    for (const w of ON_PATHS) await runWorkload(bench, w);
    if (LOADING.some((w) => bench.has(w))) bench.memory.loaded = await idleMemory(bench, false, LOADED_MEMORY_WAIT_MS);
    for (const w of ON_TOWER) await runWorkload(bench, w);
    if (flags.profile) {
      // a clean exit writes the profiles
      await Promise.all([bench.tunnel.proxy.stop('SIGTERM'), bench.tunnel.agent.stop('SIGTERM')]);
      bench.log(`CPU profiles in ${flags.profile}`);
    }
    const { text, json } = report(bench, WORKLOADS, (Date.now() - t0) / 1000);
    console.log(text);
    if (flags.json) writeFileSync(flags.json, JSON.stringify(json, null, 2));
  } finally {
    await bench.close();
  }
}
