// npm run bench [-- --agents N] [--clusters N] [--json FILE] [--quick] [--only bulk,small,floor,hops,watch,cold,soak,idle,scale,outage,metrics,clusters,replicas,stalled] [--outage-seconds N] [--profile DIR]
//                  [--agent-args "--tls-at-agent false"]   (extra flags for the measured agent)
//                  [--binary PATH]   (measure another build of tower, e.g. an older commit's)
// Measures one workload set along three paths to the same local HTTPS upstream, interleaved:
//   direct   client → upstream
//   openssh  client → ssh -L (Debian's OpenSSH, aes128-gcm@openssh.com) → upstream
//   tunnel   client → tower gateway (client cert) → SSH channel → tower agent → upstream
// and prints each figure with the ratios tunnel/direct and tunnel/openssh, plus CPU seconds and
// peak RSS of the two relaying processes (tower: proxy and agent; OpenSSH: ssh and sshd).
// `floor` measures, interleaved with bulk and small, one minimal Node HTTPS relay (scripts/bench/relay.ts):
// what a single HTTP-aware hop costs on tower's runtime, against which each of tower's two hops compares.
// `clusters` measures Kubernetes mode on its own: N Cluster resources applied at once to a real
// kube-apiserver (scripts/test-cluster.sh), until the proxy has initialized all of them, then a restart.
// `stalled` measures what a fresh proxy and agent hold for downloads whose clients stopped reading: 24, then
// 200 of them, and what stays once those clients are gone (scripts/bench/stalled.ts).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { CertificateAuthority } from '../src/pki/ca.ts';
import { AGENT_OPTIONS } from '../src/config/options.ts';

const DEFAULT_MAX_RETRY_INTERVAL_MS = AGENT_OPTIONS.maxRetryInterval.default;
import { binary as builtBinary, ensureBuilt } from './lib.mjs';
import { captureLegs, countCalls, HOPS, hopTimes, type HopPorts, type HopTimes } from './bench/hops.ts';
import { stalledTable, stalledWorkload } from './bench/stalled.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const QUICK = args.includes('--quick');
const AGENTS = Number(flag('--agents') ?? (QUICK ? 100 : 1000));
const JSON_OUT = flag('--json');
const ONLY = new Set(
  (flag('--only') ?? 'bulk,small,floor,hops,watch,cold,soak,idle,scale,outage,metrics,clusters,replicas,stalled').split(
    ',',
  ),
);
/** how long the proxy stays down in the outage workload: long enough for every agent's backoff to reach its cap */
const OUTAGE_SECONDS = Number(flag('--outage-seconds') ?? (QUICK ? 45 : 120));
const CLUSTERS = Number(flag('--clusters') ?? (QUICK ? 50 : 200));
/** --profile DIR: the proxy and agent write V8 CPU profiles there (node --cpu-prof) */
const PROFILE = flag('--profile');
const binary = flag('--binary') ?? builtBinary;
const AGENT_ARGS = (flag('--agent-args') ?? '').split(' ').filter(Boolean);
// sampled every 250 µs: a request costs a few hundred µs per process
const TOWER_ENV = PROFILE ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-interval=250 --cpu-prof-dir=${PROFILE}` } : {};
const BULK_BYTES = (QUICK ? 256 : 1024) * 1024 * 1024;
const BULK_RUNS = 3;
const SMALL_SECONDS = QUICK ? 3 : 10;
/** the hop timeline: seconds of one request at a time, captured, then again under strace */
const HOPS_SECONDS = QUICK ? 2 : 4;
const WATCH_STREAMS = QUICK ? 200 : 1000;
const WATCH_EVENTS = QUICK ? 5 : 10;
const CLK_TCK = 100;
/** the soak: requests through one agent, mixed sizes, reused and fresh connections, with watches */
const SOAK_REQUESTS = Number(flag('--soak-requests') ?? (QUICK ? 100_000 : 1_000_000));
const SOAK_CONCURRENCY = 32;
const SOAK_FRESH_EVERY = Number(flag('--soak-fresh-every') ?? 50);
const SOAK_WATCHES = 16;
/** idle CPU of a proxy with no cluster, then with this many (file store) */
const IDLE_CLUSTERS = QUICK ? 100 : 400;
const IDLE_SECONDS = QUICK ? 5 : 10;

type PathName = 'direct' | 'openssh' | 'tunnel';
const PATHS: PathName[] = ['direct', 'openssh', 'tunnel'];
interface Endpoint {
  host: string;
  port: number;
  prefix: string;
  ca: string;
  cert: string;
  key: string;
}
interface Row {
  workload: string;
  figure: string;
  unit: string;
  better: 'higher' | 'lower';
  values: Partial<Record<PathName, number>>;
}
interface Usage {
  workload: string;
  path: PathName;
  cpuA: number;
  cpuB: number;
  peakA: number;
  peakB: number;
}

const rows: Row[] = [];
const usage: Usage[] = [];
const children: ChildProcess[] = [];
const work = mkdtempSync(join(tmpdir(), 'tower-bench-'));

function log(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

async function waitPort(port: number, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function start(cmd: string, argv: string[], opts: { env?: NodeJS.ProcessEnv } = {}): ChildProcess & { output: string } {
  const child = spawn(cmd, argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  }) as ChildProcess & { output: string };
  child.output = '';
  const add = (d: Buffer) => {
    child.output += d.toString();
    if (child.output.length > 1e6) child.output = child.output.slice(-5e5);
  };
  child.stdout!.on('data', add);
  child.stderr!.on('data', add);
  children.push(child);
  return child;
}

async function waitOutput(
  child: ChildProcess & { output: string },
  re: RegExp,
  timeoutMs = 20_000,
  from = 0,
): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = re.exec(child.output.slice(from));
    if (m) return m;
    if (child.exitCode !== null || Date.now() > deadline)
      throw new Error(`${child.spawnargs.join(' ')} did not print ${re}:\n${child.output.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** user and system CPU seconds of a process, apart */
function cpuSplit(pid: number): [number, number] {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return [Number(f[11]) / CLK_TCK, Number(f[12]) / CLK_TCK];
}
function cpuSeconds(pid: number): number {
  const [user, system] = cpuSplit(pid);
  return user + system;
}
function resetPeak(pid: number): void {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    /* older kernels: lifetime peak */
  }
}
/** fields of /proc/PID/status given in kB, in MiB */
function statusMiB(pid: number, keys: string[]): number[] {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return keys.map((k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) / 1024);
}
const peakMiB = (pid: number): number => statusMiB(pid, ['VmHWM'])[0]!;
const rssMiB = (pid: number): number => statusMiB(pid, ['VmRSS'])[0]!;
function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}
/** resident memory of a process, MiB: all of it, anonymous, and file-backed (its binary and libraries, shared and reclaimable) */
interface Resident {
  rss: number;
  anon: number;
  file: number;
  fds: number;
}
function resident(pid: number): Resident {
  const [rss, anon, shmem, file] = statusMiB(pid, ['VmRSS', 'RssAnon', 'RssShmem', 'RssFile']) as [
    number,
    number,
    number,
    number,
  ];
  return { rss, anon: anon + shmem, file, fds: openFds(pid) };
}

/** Runs one load job in its own process. */
async function load(ep: Endpoint, job: Record<string, unknown>): Promise<Record<string, number>> {
  const child = spawn(
    process.execPath,
    [
      join(HERE, 'bench', 'load.ts'),
      JSON.stringify({
        host: ep.host,
        port: ep.port,
        ca: ep.ca,
        cert: ep.cert,
        key: ep.key,
        ...job,
        path: ep.prefix + job.path,
      }),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    err += d;
  });
  const [code] = await once(child, 'exit');
  if (code !== 0) throw new Error(`load ${JSON.stringify(job)} failed: ${err.trim()}`);
  return JSON.parse(out);
}

/** The two processes that relay bytes on a path (none for direct). */
let relays: Record<PathName, [number, number] | undefined>;

/** One minimal Node HTTPS relay (scripts/bench/relay.ts), measured beside bulk and small with `floor`. */
interface Floor {
  pid: number;
  ep: Endpoint;
  bulk: { mbps: number; cpu: number; peak: number }[];
  small: Record<number, { rps: number; p50: number; p99: number; cpuUs: number }>;
}
let floor: Floor | undefined;
/** requests answered in each small run, by concurrency and path (for CPU per request) */
const smallCounts: Record<number, Partial<Record<PathName, number>>> = {};

/** `fn`'s result with the CPU seconds and peak RSS (MiB) that each of `pids` spent on it */
async function sampled<T>(pids: number[], fn: () => Promise<T>): Promise<{ r: T; cpu: number[]; peak: number[] }> {
  for (const p of pids) resetPeak(p);
  const cpu0 = pids.map(cpuSeconds);
  const r = await fn();
  return { r, cpu: pids.map((p, i) => cpuSeconds(p) - cpu0[i]!), peak: pids.map(peakMiB) };
}

async function measured<T>(workload: string, path: PathName, fn: () => Promise<T>): Promise<T> {
  const pids = relays[path];
  if (!pids) return fn();
  const { r, cpu, peak } = await sampled(pids, fn);
  usage.push({ workload, path, cpuA: cpu[0]!, cpuB: cpu[1]!, peakA: peak[0]!, peakB: peak[1]! });
  return r;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

// ---------------------------------------------------------------------------------------------
async function setupPki() {
  const caPair = await CertificateAuthority.create('bench-upstream-ca');
  const ca = await CertificateAuthority.load(caPair, 'bench');
  const server = await ca.issueServer(['127.0.0.1', 'localhost']);
  const client = await ca.issueClient('bench', ['system:masters']);
  const files = {
    ca: join(work, 'up-ca.crt'),
    cert: join(work, 'up.crt'),
    key: join(work, 'up.key'),
    ccert: join(work, 'client.crt'),
    ckey: join(work, 'client.key'),
  };
  writeFileSync(files.ca, caPair.cert);
  writeFileSync(files.cert, server.cert);
  writeFileSync(files.key, server.key);
  writeFileSync(files.ccert, client.cert);
  writeFileSync(files.ckey, client.key);
  return { files, client, caPem: caPair.cert };
}

/** Commands the bench runs ([command, Debian package]), from Debian's archive when missing. */
function ensureTools(tools: [string, string][]): void {
  const have = (c: string) => spawnSync('sh', ['-c', `command -v ${c} || test -x /usr/sbin/${c}`]).status === 0;
  const missing = tools.filter(([c]) => !have(c)).map(([, p]) => p);
  if (missing.length === 0) return;
  log(`installing ${missing.join(', ')} with apt-get`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  spawnSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env });
  const r = spawnSync('apt-get', ['install', '-y', '-qq', ...missing], { stdio: 'ignore', env });
  if (r.status !== 0) throw new Error(`cannot install ${missing.join(', ')} (apt-get failed)`);
}

async function setupOpenSSH(
  upstreamPort: number,
): Promise<{ endpoint: Omit<Endpoint, 'ca' | 'cert' | 'key'>; pids: [number, number]; sshdPort: number }> {
  // OpenSSH (the peer path) and curl (the bulk client)
  ensureTools([
    ['ssh', 'openssh-client'],
    ['sshd', 'openssh-server'],
    ['curl', 'curl'],
  ]);
  const d = join(work, 'ssh');
  mkdirSync(d, { mode: 0o700 });
  for (const k of ['host_key', 'user_key'])
    spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(d, k)]);
  writeFileSync(join(d, 'authorized_keys'), readFileSync(join(d, 'user_key.pub')));
  chmodSync(join(d, 'authorized_keys'), 0o600);
  mkdirSync('/run/sshd', { recursive: true });
  const sshdPort = await freePort();
  writeFileSync(
    join(d, 'sshd_config'),
    [
      `ListenAddress 127.0.0.1:${sshdPort}`,
      `HostKey ${join(d, 'host_key')}`,
      `AuthorizedKeysFile ${join(d, 'authorized_keys')}`,
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'StrictModes no',
      'UsePAM no',
      'AllowTcpForwarding yes',
      'Ciphers aes128-gcm@openssh.com',
      `PidFile ${join(d, 'sshd.pid')}`,
    ].join('\n') + '\n',
  );
  const sshd = start('/usr/sbin/sshd', ['-D', '-e', '-f', join(d, 'sshd_config')]);
  await waitPort(sshdPort);
  const localPort = await freePort();
  const user = process.env.USER ?? 'root';
  const ssh = start('ssh', [
    '-N',
    '-T',
    '-i',
    join(d, 'user_key'),
    '-p',
    String(sshdPort),
    '-c',
    'aes128-gcm@openssh.com',
    '-o',
    'StrictHostKeyChecking=no',
    '-o',
    'UserKnownHostsFile=/dev/null',
    '-o',
    'BatchMode=yes',
    '-o',
    'ExitOnForwardFailure=yes',
    '-L',
    `${localPort}:127.0.0.1:${upstreamPort}`,
    `${user}@127.0.0.1`,
  ]);
  await waitPort(localPort);
  // the per-connection sshd process relays the bytes
  let session = 0;
  for (let i = 0; i < 100 && !session; i++) {
    const r = spawnSync('pgrep', ['-P', String(sshd.pid)], { encoding: 'utf8' });
    session = Number(r.stdout.trim().split('\n').pop() || 0);
    if (!session) await new Promise((res) => setTimeout(res, 50));
  }
  // with privilege separation the relay is a grandchild
  const grand = spawnSync('pgrep', ['-P', String(session)], { encoding: 'utf8' })
    .stdout.trim()
    .split('\n')
    .filter(Boolean)
    .map(Number);
  return {
    endpoint: { host: '127.0.0.1', port: localPort, prefix: '' },
    pids: [ssh.pid!, grand[0] ?? session],
    sshdPort,
  };
}

async function setupTower(pki: Awaited<ReturnType<typeof setupPki>>, upstreamPort: number) {
  const dataDir = join(work, 'tower');
  const env = { TOWER_HOME: dataDir };
  const agentPort = await freePort();
  const gatewayPort = await freePort();
  const proxyArgs = [
    'proxy',
    '--host',
    '127.0.0.1',
    '--port',
    String(agentPort),
    '--gateway-port',
    String(gatewayPort),
  ];
  const proxy = start(binary, proxyArgs, { env: { ...env, ...TOWER_ENV } });
  await waitOutput(proxy, /proxy serving/);
  const tok = spawnSync(binary, ['token', 'bench'], { env: { ...process.env, ...env }, encoding: 'utf8' });
  const token = /^token: (\w+)/m.exec(tok.stdout)![1]!;
  // the agent verifies the proxy as the join command says
  const fingerprint = /--proxy-fingerprint (\S+)/.exec(tok.stdout)![1]!;
  const memberKc = join(work, 'member.kubeconfig');
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  writeFileSync(
    memberKc,
    [
      'apiVersion: v1',
      'kind: Config',
      'current-context: c',
      `clusters: [{name: m, cluster: {server: "https://127.0.0.1:${upstreamPort}", certificate-authority-data: ${b64(pki.caPem)}}}]`,
      // a token besides the certificate, as a ServiceAccount's: the agent adds it to every request (the upstream ignores it)
      `users: [{name: u, user: {client-certificate-data: ${b64(pki.client.cert)}, client-key-data: ${b64(pki.client.key)}, token: bench-service-account-token}}]`,
      'contexts: [{name: c, context: {cluster: m, user: u}}]',
    ].join('\n') + '\n',
  );
  const agentArgs = [
    'agent',
    '--name',
    'bench',
    '--token',
    token,
    '--proxy-server',
    `http://127.0.0.1:${agentPort}`,
    '--proxy-fingerprint',
    fingerprint,
    '--kubeconfig',
    memberKc,
    ...AGENT_ARGS,
  ];
  const agent = start(binary, agentArgs, { env: TOWER_ENV });
  await waitOutput(agent, /connected to proxy/);
  const kc = parse(
    spawnSync(binary, ['kubeconfig', 'bench'], { env: { ...process.env, ...env }, encoding: 'utf8' }).stdout,
  );
  const gw = { ca: join(work, 'gw-ca.crt'), cert: join(work, 'gw.crt'), key: join(work, 'gw.key') };
  writeFileSync(gw.ca, Buffer.from(kc.clusters[0].cluster['certificate-authority-data'], 'base64'));
  writeFileSync(gw.cert, Buffer.from(kc.users[0].user['client-certificate-data'], 'base64'));
  writeFileSync(gw.key, Buffer.from(kc.users[0].user['client-key-data'], 'base64'));
  return {
    env,
    token,
    fingerprint,
    agentPort,
    gatewayPort,
    proxy,
    agent,
    proxyArgs,
    memberKc,
    endpoint: { host: '127.0.0.1', port: gatewayPort, prefix: '/clusters/bench', ...gw },
  };
}

// ---------------------------------------------------------------------------------------------
async function main(): Promise<void> {
  const t0 = Date.now();
  if (!flag('--binary')) ensureBuilt();
  const pki = await setupPki();
  const upstream = start(process.execPath, [
    join(HERE, 'bench', 'upstream.ts'),
    pki.files.cert,
    pki.files.key,
    pki.files.ca,
  ]);
  const upstreamPort = Number((await waitOutput(upstream, /^(\d+)$/m))[1]);
  const clientTls = { ca: pki.files.ca, cert: pki.files.ccert, key: pki.files.ckey };
  const ssh = await setupOpenSSH(upstreamPort);
  if (PROFILE) mkdirSync(PROFILE, { recursive: true });
  // a binary just written (npm run build) sits in the page cache in large folios, and every process
  // then maps far more of it (68 MiB file-backed against 45-50): read it from disk, as a deployment does
  spawnSync('dd', [`if=${binary}`, 'iflag=nocache', 'count=0', 'status=none']);
  const tower = await setupTower(pki, upstreamPort);
  const eps: Record<PathName, Endpoint> = {
    direct: { host: '127.0.0.1', port: upstreamPort, prefix: '', ...clientTls },
    openssh: { ...ssh.endpoint, ...clientTls },
    tunnel: tower.endpoint,
  };
  relays = { direct: undefined, openssh: ssh.pids, tunnel: [tower.proxy.pid!, tower.agent.pid!] };
  if (ONLY.has('floor')) {
    const relay = start(process.execPath, [
      join(HERE, 'bench', 'relay.ts'),
      String(upstreamPort),
      pki.files.ca,
      pki.files.cert,
      pki.files.key,
      pki.files.ccert,
      pki.files.ckey,
    ]);
    const port = Number((await waitOutput(relay, /^(\d+)$/m))[1]);
    floor = { pid: relay.pid!, ep: { host: '127.0.0.1', port, prefix: '', ...clientTls }, bulk: [], small: {} };
  }
  log(
    `upstream :${upstreamPort}, ssh -L :${ssh.endpoint.port}, gateway :${tower.gatewayPort}; ${QUICK ? 'quick run' : 'full run'}`,
  );

  const memory: Extra['memory'] = { start: await idleMemory(true) };
  if (ONLY.has('bulk') || ONLY.has('floor')) await bulkWorkload(eps);
  if (ONLY.has('small') || ONLY.has('floor')) await smallWorkload(eps);
  const hops = ONLY.has('hops')
    ? await hopsWorkload(eps, {
        openssh: {
          entry: ssh.endpoint.port,
          middle: ssh.sshdPort,
          upstream: upstreamPort,
          middleListensAtEntry: false,
        },
        tunnel: {
          entry: tower.gatewayPort,
          middle: tower.agentPort,
          upstream: upstreamPort,
          middleListensAtEntry: true,
        },
      })
    : undefined;
  if (ONLY.has('watch')) await watchWorkload(eps);
  if (['bulk', 'small', 'hops', 'watch'].some((w) => ONLY.has(w)))
    memory.loaded = await idleMemory(false, LOADED_MEMORY_WAIT_MS);
  if (ONLY.has('cold')) await coldWorkload(eps, tower);
  const soak = ONLY.has('soak') ? await soakWorkload(tower) : undefined;
  const idle = ONLY.has('idle') ? await idleWorkload() : undefined;
  const scale = ONLY.has('scale') ? await scaleWorkload(tower) : undefined;
  const outage = ONLY.has('outage') ? await outageWorkload(tower) : undefined;
  const metrics = ONLY.has('metrics') ? metricsWorkload() : undefined;
  const clusters = ONLY.has('clusters') ? await clustersWorkload() : undefined;
  const replicas = ONLY.has('replicas') ? await replicasWorkload() : undefined;
  const stalled = ONLY.has('stalled')
    ? await stalledWorkload({
        binary,
        work,
        upstreamPort,
        upstreamCaPem: pki.caPem,
        client: pki.client,
        agentArgs: AGENT_ARGS,
        env: TOWER_ENV,
        start,
        waitOutput,
        freePort,
        log,
      })
    : undefined;
  if (PROFILE) {
    // a clean exit writes the profiles
    for (const c of [tower.proxy, tower.agent]) {
      c.kill('SIGTERM');
      if (c.exitCode === null) await once(c, 'exit');
    }
    log(`CPU profiles in ${PROFILE}`);
  }
  report({ memory, hops, soak, idle, scale, clusters, outage, metrics, replicas, stalled }, (Date.now() - t0) / 1000);
}

const IDLE_MEMORY_WAIT_MS = 3000;
/** after load: longer than one of the relays' 30 s malloc trim checks (src/observe/memory.ts) */
const LOADED_MEMORY_WAIT_MS = 35_000;
/**
 * Resident memory of the idle relays (tower's proxy and agent, ssh and sshd) and of the same Node 24
 * doing nothing, the floor under any program on this runtime.
 */
async function idleMemory(withRuntime: boolean, waitMs = IDLE_MEMORY_WAIT_MS): Promise<Record<string, Resident>> {
  const runtime = withRuntime ? start(process.execPath, ['-e', 'setInterval(() => {}, 60_000)']) : undefined;
  await new Promise((r) => setTimeout(r, waitMs));
  const [proxy, agent] = relays.tunnel!;
  const [ssh, sshd] = relays.openssh!;
  const out: Record<string, Resident> = {
    proxy: resident(proxy),
    agent: resident(agent),
    ssh: resident(ssh),
    sshd: resident(sshd),
  };
  if (floor) out.relay = resident(floor.pid);
  if (runtime) {
    out.runtime = resident(runtime.pid!);
    runtime.kill('SIGTERM');
  }
  return out;
}

/** curl (C, OpenSSL) fetches the body: the Node client tops out below the direct path's speed */
function curlBulk(ep: Endpoint, path: string): Promise<{ bytes: number; seconds: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'curl',
      [
        '-s',
        '-o',
        '/dev/null',
        '-w',
        '%{size_download} %{time_total}',
        '--cacert',
        ep.ca,
        '--cert',
        ep.cert,
        '--key',
        ep.key,
        `https://${ep.host}:${ep.port}${ep.prefix}${path}`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.on('exit', (code) => {
      const [bytes, seconds] = out.trim().split(' ').map(Number);
      if (code === 0 && bytes && seconds) resolve({ bytes, seconds });
      else reject(new Error(`curl ${path} on ${ep.port} failed (${code}): ${out}`));
    });
  });
}

async function bulkWorkload(eps: Record<PathName, Endpoint>): Promise<void> {
  const bulk: Record<PathName, number[]> = { direct: [], openssh: [], tunnel: [] };
  for (let run = 0; run < BULK_RUNS; run++) {
    for (const p of PATHS) {
      const r = await measured('bulk', p, () => curlBulk(eps[p], `/bulk?bytes=${BULK_BYTES}`));
      if (r.bytes !== BULK_BYTES) throw new Error(`bulk on ${p}: ${r.bytes} of ${BULK_BYTES} bytes`);
      bulk[p].push(r.bytes / 1e6 / r.seconds);
    }
    if (floor) {
      const f = await sampled([floor.pid], () => curlBulk(floor!.ep, `/bulk?bytes=${BULK_BYTES}`));
      if (f.r.bytes !== BULK_BYTES) throw new Error(`bulk through the Node relay: ${f.r.bytes} of ${BULK_BYTES} bytes`);
      floor.bulk.push({ mbps: f.r.bytes / 1e6 / f.r.seconds, cpu: f.cpu[0]!, peak: f.peak[0]! });
    }
  }
  rows.push({
    workload: 'bulk',
    figure: `GET ${BULK_BYTES / 2 ** 20} MiB (curl), median of ${BULK_RUNS}`,
    unit: 'MB/s',
    better: 'higher',
    values: Object.fromEntries(PATHS.map((p) => [p, median(bulk[p])])),
  });
  const node = await load(eps.direct, { mode: 'bulk', path: `/bulk?bytes=${BULK_BYTES}` });
  log(
    `load generator check: the Node client gets ${(node.bytes! / 1e6 / node.seconds!).toFixed(0)} MB/s direct, curl ${median(bulk.direct).toFixed(0)} MB/s`,
  );
}

async function smallWorkload(eps: Record<PathName, Endpoint>): Promise<void> {
  for (const c of [1, 64]) {
    const res: Partial<Record<PathName, Record<string, number>>> = {};
    for (const p of PATHS)
      res[p] = await measured(`small c=${c}`, p, () =>
        load(eps[p], { mode: 'small', path: '/small', concurrency: c, seconds: SMALL_SECONDS }),
      );
    smallCounts[c] = Object.fromEntries(PATHS.map((p) => [p, res[p]!.requests!]));
    if (floor) {
      const f = await sampled([floor.pid], () =>
        load(floor!.ep, { mode: 'small', path: '/small', concurrency: c, seconds: SMALL_SECONDS }),
      );
      floor.small[c] = {
        rps: f.r.requests! / f.r.seconds!,
        p50: f.r.p50!,
        p99: f.r.p99!,
        cpuUs: (f.cpu[0]! * 1e6) / f.r.requests!,
      };
    }
    const pick = (k: string) =>
      Object.fromEntries(PATHS.map((p) => [p, k === 'rps' ? res[p]!.requests! / res[p]!.seconds! : res[p]![k]!]));
    rows.push({ workload: `small c=${c}`, figure: 'requests/s', unit: 'req/s', better: 'higher', values: pick('rps') });
    rows.push({ workload: `small c=${c}`, figure: 'p50 latency', unit: 'ms', better: 'lower', values: pick('p50') });
    rows.push({ workload: `small c=${c}`, figure: 'p99 latency', unit: 'ms', better: 'lower', values: pick('p99') });
  }
}

/**
 * One request at a time, hop by hop: tcpdump's timestamps give each relay's share (median), a
 * second run under strace the event-loop waits and write calls per request. With --profile that
 * second run is left out: ptrace stops every system call, which the profiles would show as time
 * spent writing.
 */
async function hopsWorkload(eps: Record<PathName, Endpoint>, ports: Record<'openssh' | 'tunnel', HopPorts>) {
  ensureTools([
    ['tcpdump', 'tcpdump'],
    ['strace', 'strace'],
  ]);
  const out: Partial<
    Record<
      'openssh' | 'tunnel',
      {
        hops: HopTimes;
        requests: number;
        cpu: [number, number][];
        calls?: { waits: number[]; writes: number[]; requests: number };
      }
    >
  > = {};
  for (const p of ['openssh', 'tunnel'] as const) {
    const pids = relays[p]!;
    const capture = await captureLegs(ports[p]);
    const cpu0 = pids.map(cpuSplit);
    const loaded = await load(eps[p], { mode: 'small', path: '/small', concurrency: 1, seconds: HOPS_SECONDS });
    // µs of user and system CPU per request, for each relay
    const cpu = pids.map(
      (pid, i) => cpuSplit(pid).map((v, k) => ((v - cpu0[i]![k]!) * 1e6) / loaded.requests!) as [number, number],
    );
    const timed = hopTimes(await capture.stop());
    let calls;
    if (!PROFILE) {
      const counted = await countCalls(pids, () =>
        load(eps[p], { mode: 'small', path: '/small', concurrency: 1, seconds: HOPS_SECONDS }),
      );
      calls = { waits: counted.waits, writes: counted.writes, requests: counted.result.requests! };
    }
    out[p] = { ...timed, cpu, calls };
  }
  return out;
}

async function watchWorkload(eps: Record<PathName, Endpoint>): Promise<void> {
  const watch: Partial<Record<PathName, number>> = {};
  for (const p of PATHS) {
    const r = await measured('watch', p, () =>
      load(eps[p], { mode: 'watch', path: `/watch?n=${WATCH_EVENTS}`, streams: WATCH_STREAMS }),
    );
    if (r.failed) log(`watch on ${p}: ${r.failed} of ${WATCH_STREAMS} streams failed`);
    watch[p] = r.events! / (WATCH_STREAMS * WATCH_EVENTS);
  }
  rows.push({
    workload: 'watch',
    figure: `${WATCH_STREAMS} streams × ${WATCH_EVENTS} events delivered`,
    unit: 'fraction',
    better: 'higher',
    values: watch,
  });
}

/** a fresh agent process to its first answered request, against one request on a fresh client */
async function coldWorkload(
  eps: Record<PathName, Endpoint>,
  tower: Awaited<ReturnType<typeof setupTower>>,
): Promise<void> {
  const cold: Partial<Record<PathName, number>> = {};
  {
    const tok = spawnSync(binary, ['token', 'cold'], { env: { ...process.env, ...tower.env }, encoding: 'utf8' });
    const token = /^token: (\w+)/m.exec(tok.stdout)![1]!;
    const kc = parse(
      spawnSync(binary, ['kubeconfig', 'cold'], { env: { ...process.env, ...tower.env }, encoding: 'utf8' }).stdout,
    );
    const coldEp: Endpoint = {
      ...tower.endpoint,
      prefix: '/clusters/cold',
      cert: join(work, 'cold.crt'),
      key: join(work, 'cold.key'),
    };
    writeFileSync(coldEp.cert, Buffer.from(kc.users[0].user['client-certificate-data'], 'base64'));
    writeFileSync(coldEp.key, Buffer.from(kc.users[0].user['client-key-data'], 'base64'));
    const s = Date.now();
    const agent = start(binary, [
      'agent',
      '--name',
      'cold',
      '--token',
      token,
      '--proxy-server',
      `http://127.0.0.1:${tower.agentPort}`,
      '--proxy-fingerprint',
      tower.fingerprint,
      '--kubeconfig',
      tower.memberKc,
    ]);
    for (;;) {
      try {
        await load(coldEp, { mode: 'bulk', path: '/small' });
        break;
      } catch {
        if (Date.now() - s > 20_000) throw new Error('cold agent never served');
      }
    }
    cold.tunnel = Date.now() - s;
    agent.kill('SIGTERM');
    const d = Date.now();
    await load(eps.direct, { mode: 'bulk', path: '/small' });
    cold.direct = Date.now() - d;
  }
  rows.push({
    workload: 'cold path',
    figure: 'start to first answered request (incl. a client process start)',
    unit: 'ms',
    better: 'lower',
    values: cold,
  });
}

/** Waits until a request through `ep` is answered (after a restart, the agent comes back first). */
async function waitServed(ep: Endpoint): Promise<void> {
  const s = Date.now();
  for (;;) {
    try {
      await load(ep, { mode: 'bulk', path: '/small' });
      return;
    } catch {
      if (Date.now() - s > 20_000) throw new Error('the tunnel did not serve within 20 s');
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/**
 * A million requests through one fresh proxy and its agent: RSS and open descriptors sampled every
 * second must stay flat (last third against first third), no listener warning, and SIGTERM
 * afterwards must end the proxy at once.
 */
async function soakWorkload(tower: Awaited<ReturnType<typeof setupTower>>) {
  await restartProxy(tower);
  await waitServed(tower.endpoint);
  const from = [tower.proxy.output.length, tower.agent.output.length];
  const samples: { proxyRss: number; agentRss: number; proxyFds: number; agentFds: number }[] = [];
  const sampler = setInterval(() => {
    try {
      samples.push({
        proxyRss: rssMiB(tower.proxy.pid!),
        agentRss: rssMiB(tower.agent.pid!),
        proxyFds: openFds(tower.proxy.pid!),
        agentFds: openFds(tower.agent.pid!),
      });
    } catch {
      /* a process between lives */
    }
  }, 1000);
  const cpu0 = [cpuSeconds(tower.proxy.pid!), cpuSeconds(tower.agent.pid!)];
  const r = await load(tower.endpoint, {
    mode: 'soak',
    path: '/small',
    concurrency: SOAK_CONCURRENCY,
    streams: SOAK_WATCHES,
    requests: SOAK_REQUESTS,
    freshEvery: SOAK_FRESH_EVERY,
  });
  clearInterval(sampler);
  const cpu = [cpuSeconds(tower.proxy.pid!) - cpu0[0]!, cpuSeconds(tower.agent.pid!) - cpu0[1]!];
  const third = Math.max(1, Math.floor(samples.length / 3));
  const first = samples.slice(0, third);
  const last = samples.slice(-third);
  const avg = (part: typeof samples, k: keyof (typeof samples)[number]) => mean(part.map((x) => x[k]));
  const warnings =
    (tower.proxy.output.slice(from[0]) + tower.agent.output.slice(from[1])).match(/MaxListenersExceededWarning/g)
      ?.length ?? 0;
  const t = Date.now();
  tower.proxy.kill('SIGTERM');
  if (tower.proxy.exitCode === null) await once(tower.proxy, 'exit');
  const exitSeconds = (Date.now() - t) / 1000;
  const exitCode = tower.proxy.exitCode;
  tower.proxy = start(binary, tower.proxyArgs, { env: { ...tower.env, ...TOWER_ENV } });
  await waitOutput(tower.proxy, /proxy serving/);
  const result = {
    requests: r.requests!,
    failed: r.failed!,
    seconds: r.seconds!,
    cpuProxy: cpu[0]!,
    cpuAgent: cpu[1]!,
    proxyRss: [avg(first, 'proxyRss'), avg(last, 'proxyRss')],
    agentRss: [avg(first, 'agentRss'), avg(last, 'agentRss')],
    proxyFds: [avg(first, 'proxyFds'), avg(last, 'proxyFds')],
    agentFds: [avg(first, 'agentFds'), avg(last, 'agentFds')],
    warnings,
    exitSeconds,
    exitCode,
  };
  log(
    `soak: ${result.requests} requests in ${result.seconds.toFixed(0)} s, proxy RSS ${result.proxyRss.map((x) => x.toFixed(0)).join(' → ')} MiB, agent ${result.agentRss.map((x) => x.toFixed(0)).join(' → ')} MiB`,
  );
  return result;
}

/** An idle proxy's CPU with no cluster, then with IDLE_CLUSTERS of them in its file store. */
async function idleWorkload() {
  const dir = join(work, 'idle');
  mkdirSync(join(dir, 'clusters'), { recursive: true });
  const proxy = start(
    binary,
    ['proxy', '--host', '127.0.0.1', '--port', String(await freePort()), '--gateway-port', String(await freePort())],
    { env: { TOWER_HOME: dir } },
  );
  await waitOutput(proxy, /proxy serving/);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const idlePercent = async () => {
    await sleep(2000);
    const c0 = cpuSeconds(proxy.pid!);
    await sleep(IDLE_SECONDS * 1000);
    return ((cpuSeconds(proxy.pid!) - c0) / IDLE_SECONDS) * 100;
  };
  const none = await idlePercent();
  // the file store's own format, as `tower token` writes it
  for (let i = 0; i < IDLE_CLUSTERS; i++) {
    writeFileSync(
      join(dir, 'clusters', `idle-${i}.yaml`),
      `name: idle-${i}\ntoken: ${randomBytes(32).toString('hex')}\ncreatedAt: "${new Date().toISOString()}"\ngeneration: 1\n`,
      { mode: 0o600 },
    );
  }
  const s = Date.now();
  while ((proxy.output.match(/cluster registered/g) ?? []).length < IDLE_CLUSTERS) {
    if (Date.now() - s > 30_000) throw new Error('the proxy did not register the idle clusters');
    await sleep(100);
  }
  const many = await idlePercent();
  proxy.kill('SIGTERM');
  if (proxy.exitCode === null) await once(proxy, 'exit');
  log(`idle proxy CPU: ${none.toFixed(2)}% with no cluster, ${many.toFixed(2)}% with ${IDLE_CLUSTERS}`);
  return { clusters: IDLE_CLUSTERS, none, many };
}

async function scaleWorkload(tower: Awaited<ReturnType<typeof setupTower>>) {
  const proxyPid = () => tower.proxy.pid!;
  // a fresh proxy, so that the earlier workloads' heap does not hide the agents' cost
  await restartProxy(tower);
  await new Promise((r) => setTimeout(r, 1000));
  const before = rssMiB(proxyPid());
  const tok = spawnSync(binary, ['token', 'swarm'], { env: { ...process.env, ...tower.env }, encoding: 'utf8' });
  const token = /^token: (\w+)/m.exec(tok.stdout)![1]!;
  const swarm = start(process.execPath, [
    join(HERE, 'bench', 'swarm.ts'),
    `ws://127.0.0.1:${tower.agentPort}`,
    'swarm',
    token,
    String(AGENTS),
  ]);
  const connectedCount = () => {
    const all = [...swarm.output.matchAll(/"connected":(\d+)/g)];
    return all.length ? Number(all.at(-1)![1]) : 0;
  };
  const waitAll = (limitMs: number) => untilSwarm(swarm, () => connectedCount() >= AGENTS, limitMs);
  const connectSeconds = await waitAll(180_000);
  const cpuConnect = cpuSeconds(proxyPid());
  await new Promise((r) => setTimeout(r, 1000));
  const after = rssMiB(proxyPid());
  log(
    `${AGENTS} agents connected in ${connectSeconds.toFixed(1)} s (proxy RSS ${before.toFixed(0)} → ${after.toFixed(0)} MiB)`,
  );
  // restart the proxy on the same ports and data dir, once every agent has seen it go
  const r0 = Date.now();
  await restartProxy(tower, () => connectedCount() === 0);
  const back = await waitAll(60_000);
  const rec = Number.isNaN(back) ? NaN : (Date.now() - r0) / 1000;
  swarm.kill('SIGTERM');
  return {
    agents: AGENTS,
    connectSeconds,
    perAgentKiB: ((after - before) * 1024) / AGENTS,
    handshakesPerSecond: AGENTS / connectSeconds,
    reconnectSeconds: rec,
    proxyRssMiB: after,
    proxyCpuSeconds: cpuConnect,
  };
}

/** Seconds until `done()` holds, polled every 20 ms; NaN after `limitMs` or once the swarm has exited. */
async function untilSwarm(swarm: ChildProcess, done: () => boolean, limitMs: number): Promise<number> {
  const s = Date.now();
  while (!done()) {
    if (Date.now() - s > limitMs || swarm.exitCode !== null) return NaN;
    await new Promise((r) => setTimeout(r, 20));
  }
  return (Date.now() - s) / 1000;
}

/**
 * N agents with the default backoff (--max-retry-interval 30s) through a proxy outage of
 * OUTAGE_SECONDS: the time from the proxy serving again until the first and the last are back.
 */
async function outageWorkload(tower: Awaited<ReturnType<typeof setupTower>>) {
  await restartProxy(tower);
  const tok = spawnSync(binary, ['token', 'outage'], { env: { ...process.env, ...tower.env }, encoding: 'utf8' });
  const token = /^token: (\w+)/m.exec(tok.stdout)![1]!;
  const swarm = start(process.execPath, [
    join(HERE, 'bench', 'swarm.ts'),
    `ws://127.0.0.1:${tower.agentPort}`,
    'outage',
    token,
    String(AGENTS),
    String(DEFAULT_MAX_RETRY_INTERVAL_MS),
  ]);
  const connectedCount = () => {
    const all = [...swarm.output.matchAll(/"connected":(\d+)/g)];
    return all.length ? Number(all.at(-1)![1]) : 0;
  };
  const until = (done: () => boolean, limitMs: number) => untilSwarm(swarm, done, limitMs);
  await until(() => connectedCount() === AGENTS, 180_000);
  tower.proxy.kill('SIGTERM');
  if (tower.proxy.exitCode === null) await once(tower.proxy, 'exit');
  log(`proxy down for ${OUTAGE_SECONDS} s with ${AGENTS} agents retrying`);
  await new Promise((r) => setTimeout(r, OUTAGE_SECONDS * 1000));
  tower.proxy = start(binary, tower.proxyArgs, { env: { ...tower.env, ...TOWER_ENV } });
  await waitOutput(tower.proxy, /proxy serving/);
  const first = await until(() => connectedCount() > 0, 120_000);
  const all = first + (await until(() => connectedCount() === AGENTS, 120_000));
  swarm.kill('SIGTERM');
  log(
    `after a ${OUTAGE_SECONDS} s outage: first agent back ${first.toFixed(1)} s, all ${AGENTS} ${all.toFixed(1)} s after the proxy served again`,
  );
  return { agents: AGENTS, outageSeconds: OUTAGE_SECONDS, firstSeconds: first, allSeconds: all };
}

/** The proxy's /metrics for AGENTS clusters, each with an agent, requests and dials (scripts/bench/metrics-scrape.ts). */
function metricsWorkload() {
  const r = spawnSync(process.execPath, [join(HERE, 'bench', 'metrics-scrape.ts'), String(AGENTS), '20'], {
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`metrics-scrape failed: ${r.stderr}`);
  const m = JSON.parse(r.stdout) as { clusters: number; p50ms: number; maxms: number; bytes: number };
  log(`/metrics with ${m.clusters} clusters: ${m.p50ms.toFixed(0)} ms, ${(m.bytes / 2 ** 20).toFixed(1)} MiB`);
  return m;
}

/** Kubernetes mode: N Clusters applied at once, initialized by the proxy; then the proxy restarts. */
/** A host kube-apiserver with KubeSphere's Cluster CRD and kubesphere-system (stopped by cleanup()). */
async function startHost(name: string) {
  const script = join(HERE, 'test-cluster.sh');
  const built = spawnSync('bash', [script, 'build'], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (built.status !== 0) throw new Error('cannot build the test kube-apiserver');
  const dir = join(work, name);
  mkdirSync(dir);
  const stopBefore = stopHost;
  stopHost = () => {
    spawnSync('bash', [script, 'stop', dir]);
    stopBefore();
  };
  const started = spawnSync('bash', [script, 'start', dir], { encoding: 'utf8' });
  if (started.status !== 0) throw new Error(`kube-apiserver did not start: ${started.stderr}`);
  const kc = join(dir, 'admin.kubeconfig');
  const kubectl = (a: string[], input?: string) =>
    spawnSync('kubectl', ['--kubeconfig', kc, ...a], { encoding: 'utf8', input, maxBuffer: 256 * 2 ** 20 });
  kubectl(['apply', '-f', join(HERE, '..', 'test', 'fixtures', 'kubesphere-cluster-crd.yaml')]);
  kubectl(['create', 'namespace', 'kubesphere-system']);
  for (let i = 0; i < 50 && kubectl(['get', 'clusters']).status !== 0; i++)
    await new Promise((r) => setTimeout(r, 100));
  return { kc, kubectl, stop: () => spawnSync('bash', [script, 'stop', dir]) };
}

async function clustersWorkload() {
  const { kc, kubectl, stop } = await startHost('host');
  const proxyArgs = [
    'proxy',
    '--kubeconfig',
    kc,
    '--host',
    '127.0.0.1',
    '--port',
    String(await freePort()),
    '--gateway-port',
    String(await freePort()),
    '-v',
    '1',
  ];
  let proxy = start(binary, proxyArgs, { env: TOWER_ENV });
  await waitOutput(proxy, /proxy serving/, 60_000);
  const cpu0 = cpuSeconds(proxy.pid!);
  const items = Array.from({ length: CLUSTERS }, (_, i) => ({
    apiVersion: 'cluster.kubesphere.io/v1alpha1',
    kind: 'Cluster',
    metadata: { name: `c${i}` },
    spec: { joinFederation: true, connection: { type: 'proxy' } },
  }));
  const t0 = Date.now();
  const applied = kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));
  if (applied.status !== 0) throw new Error(`kubectl apply: ${applied.stderr}`);
  const initializedCount = () => {
    const list = JSON.parse(kubectl(['get', 'clusters', '-o', 'json']).stdout) as {
      items: { status?: { conditions?: { type: string; status: string }[] } }[];
    };
    return list.items.filter((c) => c.status?.conditions?.some((x) => x.type === 'Initialized' && x.status === 'True'))
      .length;
  };
  while (initializedCount() < CLUSTERS) {
    if (Date.now() - t0 > 300_000) throw new Error('the proxy did not initialize every Cluster within 5 minutes');
    await new Promise((r) => setTimeout(r, 250));
  }
  const initSeconds = (Date.now() - t0) / 1000;
  await waitOutput(proxy, new RegExp(`serving cluster ports cluster=c${CLUSTERS - 1} `), 60_000);
  const allocations = (proxy.output.match(/allocated ports cluster=/g) ?? []).length;
  const cpuInit = cpuSeconds(proxy.pid!) - cpu0;
  const rss = rssMiB(proxy.pid!);
  log(
    `${CLUSTERS} Clusters initialized in ${initSeconds.toFixed(1)} s (proxy CPU ${cpuInit.toFixed(1)} s, RSS ${rss.toFixed(0)} MiB)`,
  );
  proxy.kill('SIGTERM');
  if (proxy.exitCode === null) await once(proxy, 'exit');
  const r0 = Date.now();
  proxy = start(binary, proxyArgs, { env: TOWER_ENV });
  await waitOutput(proxy, /proxy serving/, 120_000);
  const restartSeconds = (Date.now() - r0) / 1000;
  // a restart with nothing to do writes nothing
  await new Promise((r) => setTimeout(r, 3000));
  const writes = (proxy.output.match(/updated Cluster|created Service|updated Service/g) ?? []).length;
  proxy.kill('SIGTERM');
  if (proxy.exitCode === null) await once(proxy, 'exit');
  stop();
  return {
    clusters: CLUSTERS,
    initSeconds,
    perSecond: CLUSTERS / initSeconds,
    cpuInit,
    rss,
    restartSeconds,
    writesAfterRestart: writes,
    allocations,
  };
}
let stopHost = () => {};

const REPLICA_ADDRESSES = ['127.0.0.2', '127.0.0.3', '127.0.0.4'];

/**
 * AGENTS agents of one cluster and three proxy replicas in Kubernetes mode (127.0.0.2-4) behind
 * haproxy, as a Service: how long until every agent holds a session to every replica, what each
 * replica carries, and how long after a replica restarts until every agent holds all three again.
 */
async function replicasWorkload() {
  const { kc, kubectl, stop } = await startHost('replicas-host');
  kubectl(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'cluster.kubesphere.io/v1alpha1',
      kind: 'Cluster',
      metadata: { name: 'swarm' },
      spec: { joinFederation: true, connection: { type: 'proxy' } },
    }),
  );
  const [agentPort, gatewayPort] = [await freePort(), await freePort()];
  const args = (i: number) => [
    'proxy',
    '--kubeconfig',
    kc,
    '--host',
    REPLICA_ADDRESSES[i]!,
    '--port',
    String(agentPort),
    '--gateway-port',
    String(gatewayPort),
    '--server-id',
    `r${i + 1}`,
    '--leader-elect',
    '--server-lease-duration',
    '10s',
    '--server-lease-renew-period',
    '2s',
  ];
  const proxies = await Promise.all(
    REPLICA_ADDRESSES.map(async (_, i) => {
      const p = start(binary, args(i), { env: TOWER_ENV });
      await waitOutput(p, /proxy serving/, 60_000);
      return p;
    }),
  );
  let token = '';
  for (let i = 0; i < 300 && !token; i++) {
    token = kubectl(['get', 'cluster', 'swarm', '-o', 'jsonpath={.spec.connection.token}']).stdout.trim();
    if (!token) await new Promise((r) => setTimeout(r, 100));
  }
  // haproxy as the agents' Service: round robin, health-checked on /readyz; as many connections as descriptors allow
  const nofile = Number(spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).stdout.trim()) || 4096;
  const frontPort = await freePort();
  const cfg = join(work, 'haproxy.cfg');
  writeFileSync(
    cfg,
    [
      'global',
      `  maxconn ${Math.min(20_000, Math.floor((nofile - 200) / 2))}`,
      'defaults',
      '  mode tcp',
      '  timeout connect 2s',
      '  timeout client 1h',
      '  timeout server 1h',
      '  timeout check 1s',
      'frontend agents',
      `  bind 127.0.0.1:${frontPort}`,
      '  default_backend agents',
      'backend agents',
      '  balance roundrobin',
      '  option httpchk GET /readyz',
      '  http-check expect status 200',
      '  default-server check inter 200ms fall 1 rise 1',
      ...REPLICA_ADDRESSES.map((a, i) => `  server r${i + 1} ${a}:${agentPort}`),
      '',
    ].join('\n'),
  );
  const haproxy = start('haproxy', ['-f', cfg, '-db']);
  await waitPort(frontPort);
  const swarm = start(process.execPath, [
    join(HERE, 'bench', 'swarm.ts'),
    `ws://127.0.0.1:${frontPort}`,
    'swarm',
    token,
    String(AGENTS),
    '5000',
  ]);
  const counts = () => {
    const all = [...swarm.output.matchAll(/"connected":(\d+),"sessions":(\d+)/g)];
    const l = all.at(-1);
    return { connected: Number(l?.[1] ?? 0), sessions: Number(l?.[2] ?? 0) };
  };
  const until = (done: () => boolean, limitMs: number) => untilSwarm(swarm, done, limitMs);
  const want = AGENTS * REPLICA_ADDRESSES.length;
  const firstSession = await until(() => counts().connected === AGENTS, 300_000);
  const everySession = firstSession + (await until(() => counts().sessions === want, 300_000));
  await new Promise((r) => setTimeout(r, 2000));
  const perReplica = await Promise.all(
    REPLICA_ADDRESSES.map(async (a) => {
      const text = await (await fetch(`http://${a}:${agentPort}/metrics`)).text();
      return Number(/^tower_proxy_agents_connected\{cluster="swarm"\} (\d+)$/m.exec(text)?.[1] ?? 0);
    }),
  );
  const rss = proxies.map((p) => rssMiB(p.pid!));
  // SWARM_LOG=1: what the agents said so far, counted
  const said = () => {
    if (process.env.SWARM_LOG)
      log(
        swarm.output
          .split('\n')
          .filter((l) => l.startsWith('{') && !l.startsWith('{"connected"'))
          .at(-1) ?? '',
      );
  };
  said();
  log(
    `${AGENTS} agents × 3 replicas: each agent held one session after ${firstSession.toFixed(1)} s, all three after ${everySession.toFixed(1)} s; sessions per replica ${perReplica.join('/')}, RSS ${rss.map((r) => r.toFixed(0)).join('/')} MiB`,
  );
  // a rolling restart of one replica: SIGTERM (drain), start again, until every agent holds it again
  proxies[1]!.kill('SIGTERM');
  if (proxies[1]!.exitCode === null) await once(proxies[1]!, 'exit');
  await until(() => counts().sessions === want - AGENTS, 60_000);
  proxies[1] = start(binary, args(1), { env: TOWER_ENV });
  await waitOutput(proxies[1], /proxy serving/, 60_000);
  const rejoin = await until(() => counts().sessions === want, 300_000);
  const swarmRss =
    Number(/"rss":(\d+)/.exec([...swarm.output.matchAll(/\{[^\n]*\}/g)].at(-1)?.[0] ?? '')?.[1] ?? 0) / 2 ** 20;
  log(`a restarted replica held by every agent again ${rejoin.toFixed(1)} s after it served`);
  said();
  swarm.kill('SIGTERM');
  for (const p of [...proxies, haproxy]) {
    p.kill('SIGTERM');
    if (p.exitCode === null) await once(p, 'exit');
  }
  stop();
  return { agents: AGENTS, firstSession, everySession, perReplica, rss, rejoin, swarmRss };
}

/** Stops the proxy and starts it again on the same ports and data dir (after `gone()` holds, if given). */
async function restartProxy(tower: Awaited<ReturnType<typeof setupTower>>, gone?: () => boolean): Promise<void> {
  tower.proxy.kill('SIGTERM');
  if (tower.proxy.exitCode === null) await once(tower.proxy, 'exit');
  const s = Date.now();
  while (gone && !gone() && Date.now() - s < 10_000) await new Promise((r) => setTimeout(r, 20));
  tower.proxy = start(binary, tower.proxyArgs, { env: { ...tower.env, ...TOWER_ENV } });
  await waitOutput(tower.proxy, /proxy serving/);
}

interface Extra {
  memory?: { start: Record<string, Resident>; loaded?: Record<string, Resident> };
  hops?: Awaited<ReturnType<typeof hopsWorkload>>;
  soak?: Awaited<ReturnType<typeof soakWorkload>>;
  idle?: Awaited<ReturnType<typeof idleWorkload>>;
  scale?: Awaited<ReturnType<typeof scaleWorkload>>;
  clusters?: Awaited<ReturnType<typeof clustersWorkload>>;
  outage?: Awaited<ReturnType<typeof outageWorkload>>;
  metrics?: ReturnType<typeof metricsWorkload>;
  replicas?: Awaited<ReturnType<typeof replicasWorkload>>;
  stalled?: Awaited<ReturnType<typeof stalledWorkload>>;
}

/**
 * The floor table: one minimal Node HTTPS relay beside OpenSSH's two processes and tower's two, from
 * the same run. Where tower's figure is near the relay's, tower's hop costs what any HTTP-aware hop on
 * its runtime does, and a goal beyond the relay's figure is beyond the runtime's.
 */
function floorTable(
  usage: Map<string, Usage>,
  fmt: (v?: number) => string,
  ratio: (a?: number, b?: number) => string,
): string[] {
  const f = floor!;
  const row = (w: string, p: PathName) => usage.get(`${w}|${p}`);
  const value = (w: string, figure: string, p: PathName) =>
    rows.find((r) => r.workload === w && r.figure.startsWith(figure))?.values[p];
  /** CPU per request of both relaying processes, µs: [sum, first, second] */
  const perRequest = (c: number, p: PathName): [number, number, number] | undefined => {
    const u = row(`small c=${c}`, p);
    const n = smallCounts[c]?.[p];
    return u && n ? [((u.cpuA + u.cpuB) * 1e6) / n, (u.cpuA * 1e6) / n, (u.cpuB * 1e6) / n] : undefined;
  };
  const perGiB = (p: PathName): [number, number, number] | undefined => {
    const u = row('bulk', p);
    const gib = (BULK_RUNS * BULK_BYTES) / 2 ** 30;
    return u ? [(u.cpuA + u.cpuB) / gib, u.cpuA / gib, u.cpuB / gib] : undefined;
  };
  const split = (v?: [number, number, number]) => (v ? `${fmt(v[0])} (${fmt(v[1])} + ${fmt(v[2])})` : '–');
  const bulkMed = f.bulk.length ? median(f.bulk.map((b) => b.mbps)) : undefined;
  const relayGiB = f.bulk.length
    ? f.bulk.reduce((a, b) => a + b.cpu, 0) / ((f.bulk.length * BULK_BYTES) / 2 ** 30)
    : undefined;
  const relayPeak = f.bulk.length ? Math.max(...f.bulk.map((b) => b.peak)) : undefined;
  const peak = (p: PathName) => {
    const u = row('bulk', p);
    return u ? Math.max(u.peakA, u.peakB) : undefined;
  };
  const lines = [
    '| one HTTP-aware hop on Node 24 (floor): a minimal Node HTTPS relay, one process | openssh (ssh + sshd) | Node relay | tower (proxy + agent) | Node relay/openssh | tower/openssh |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
  ];
  const line = (
    figure: string,
    o: number | undefined,
    n: number | undefined,
    t: number | undefined,
    oCell = fmt(o),
    tCell = fmt(t),
  ) => lines.push(`| ${figure} | ${oCell} | ${fmt(n)} | ${tCell} | ${ratio(n, o)} | ${ratio(t, o)} |`);
  for (const c of [1, 64]) {
    const s = f.small[c];
    if (!s) continue;
    if (c === 64)
      line(
        `small c=${c}, requests/s`,
        value(`small c=${c}`, 'requests/s', 'openssh'),
        s.rps,
        value(`small c=${c}`, 'requests/s', 'tunnel'),
      );
    line(
      `small c=${c}, p50 latency, ms`,
      value(`small c=${c}`, 'p50', 'openssh'),
      s.p50,
      value(`small c=${c}`, 'p50', 'tunnel'),
    );
    line(
      `small c=${c}, p99 latency, ms`,
      value(`small c=${c}`, 'p99', 'openssh'),
      s.p99,
      value(`small c=${c}`, 'p99', 'tunnel'),
    );
    const o = perRequest(c, 'openssh');
    const t = perRequest(c, 'tunnel');
    line(`small c=${c}, CPU per request, µs (all relaying processes)`, o?.[0], s.cpuUs, t?.[0], split(o), split(t));
  }
  if (bulkMed !== undefined) {
    line(
      `bulk ${BULK_BYTES / 2 ** 20} MiB, MB/s (median of ${f.bulk.length})`,
      value('bulk', 'GET', 'openssh'),
      bulkMed,
      value('bulk', 'GET', 'tunnel'),
    );
    const o = perGiB('openssh');
    const t = perGiB('tunnel');
    line('bulk, CPU s per GiB (all relaying processes)', o?.[0], relayGiB, t?.[0], split(o), split(t));
    line('bulk, peak RSS of the largest relaying process, MiB', peak('openssh'), relayPeak, peak('tunnel'));
  }
  return lines;
}

function report(
  { memory, hops, soak, idle, scale, clusters, outage, metrics, replicas, stalled }: Extra,
  elapsed: number,
): void {
  const fmt = (v: number | undefined) =>
    v === undefined || Number.isNaN(v) ? '–' : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  const ratio = (a?: number, b?: number) => (a === undefined || b === undefined || !b ? '–' : `${(a / b).toFixed(2)}×`);
  const lines: string[] = [];
  lines.push('| workload | figure | unit | direct | openssh | tunnel | tunnel/direct | tunnel/openssh |');
  lines.push('| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |');
  for (const r of rows) {
    const v = r.values;
    lines.push(
      `| ${r.workload} | ${r.figure} | ${r.unit} | ${fmt(v.direct)} | ${fmt(v.openssh)} | ${fmt(v.tunnel)} | ${ratio(v.tunnel, v.direct)} | ${ratio(v.tunnel, v.openssh)} |`,
    );
  }
  lines.push('');
  lines.push(
    '| workload | path | CPU s (proxy / ssh) | CPU s (agent / sshd) | peak RSS MiB (proxy / ssh) | peak RSS MiB (agent / sshd) |',
  );
  lines.push('| --- | --- | ---: | ---: | ---: | ---: |');
  const merged = new Map<string, Usage>();
  for (const u of usage) {
    const k = `${u.workload}|${u.path}`;
    const m = merged.get(k);
    if (!m) merged.set(k, { ...u });
    else {
      m.cpuA += u.cpuA;
      m.cpuB += u.cpuB;
      m.peakA = Math.max(m.peakA, u.peakA);
      m.peakB = Math.max(m.peakB, u.peakB);
    }
  }
  for (const u of merged.values())
    lines.push(`| ${u.workload} | ${u.path} | ${fmt(u.cpuA)} | ${fmt(u.cpuB)} | ${fmt(u.peakA)} | ${fmt(u.peakB)} |`);
  lines.push('');
  if (floor) lines.push(...floorTable(merged, fmt, ratio), '');
  if (memory) {
    const cell = (m?: Resident) => (m ? `${fmt(m.rss)} (${fmt(m.anon)} + ${fmt(m.file)}), ${m.fds} fds` : '–');
    // after the workloads the proxy's pool still holds idle channels (each an upstream TLS connection at the agent) for 90 s
    lines.push(
      `| resident memory, MiB: all (anonymous + file-backed), open descriptors | idle, before any request | idle ${LOADED_MEMORY_WAIT_MS / 1000} s after the bulk, small, hops and watch workloads (pooled connections open) |`,
    );
    lines.push('| --- | ---: | ---: |');
    for (const [k, label] of [
      ['proxy', 'tower proxy'],
      ['agent', 'tower agent'],
      ['ssh', 'ssh'],
      ['sshd', 'sshd (the relaying process)'],
      ['relay', 'one minimal Node HTTPS relay (the floor workload)'],
      ['runtime', 'Node 24 running nothing (the runtime tower is packed with)'],
    ] as const) {
      if (memory.start[k]) lines.push(`| ${label} | ${cell(memory.start[k])} | ${cell(memory.loaded?.[k])} |`);
    }
    lines.push('');
  }
  if (hops?.openssh && hops.tunnel) {
    const [o, t] = [hops.openssh, hops.tunnel];
    const us = (v: number) => (Number.isNaN(v) ? '–' : v.toFixed(0));
    lines.push(
      `| c=1 per hop, median µs (tcpdump on lo; ${o.requests} / ${t.requests} requests) | openssh | tunnel | tunnel/openssh |`,
    );
    lines.push('| --- | ---: | ---: | ---: |');
    const where = [
      'ssh / proxy: gateway → channel → WebSocket',
      'sshd / agent: WebSocket → channel → upstream TLS',
      'the same upstream',
      'sshd / agent',
      'ssh / proxy',
    ];
    HOPS.forEach((h, i) =>
      lines.push(`| ${h} (${where[i]}) | ${us(o.hops[h])} | ${us(t.hops[h])} | ${ratio(t.hops[h], o.hops[h])} |`),
    );
    const sum = (x: typeof o) => HOPS.reduce((a, h) => a + x.hops[h], 0);
    lines.push(`| sum of the medians | ${us(sum(o))} | ${us(sum(t))} | ${ratio(sum(t), sum(o))} |`);
    if (o.calls && t.calls) {
      const per = (k: 'waits' | 'writes', c: NonNullable<typeof o.calls>) =>
        c[k].map((n) => (n / c.requests).toFixed(1)).join(' / ');
      lines.push(
        `| event-loop waits per request, first / second relay (strace -c, ${o.calls.requests} / ${t.calls.requests} requests) | ${per('waits', o.calls)} | ${per('waits', t.calls)} | – |`,
      );
      lines.push(
        `| write calls per request, first / second relay | ${per('writes', o.calls)} | ${per('writes', t.calls)} | – |`,
      );
    }
    for (const [i, who] of [
      [0, 'first relay (ssh / proxy)'],
      [1, 'second relay (sshd / agent)'],
    ] as const) {
      const [oc, tc] = [o.cpu[i]!, t.cpu[i]!];
      lines.push(
        `| CPU per request, µs user + system, ${who} | ${us(oc[0])} + ${us(oc[1])} | ${us(tc[0])} + ${us(tc[1])} | ${ratio(tc[0] + tc[1], oc[0] + oc[1])} |`,
      );
    }
    lines.push('');
  }
  if (soak) {
    const pair = (p: number[]) => `${fmt(p[0])} → ${fmt(p[1])} (${ratio(p[1], p[0])})`;
    lines.push('| soak (tower only) | value |');
    lines.push('| --- | ---: |');
    lines.push(
      `| requests (every 10th 64 KiB, every ${SOAK_FRESH_EVERY}th on a fresh connection; ${SOAK_WATCHES} watches reopened throughout), failed | ${soak.requests}, ${soak.failed} |`,
    );
    lines.push(
      `| duration, s / CPU s proxy, agent | ${fmt(soak.seconds)} / ${fmt(soak.cpuProxy)}, ${fmt(soak.cpuAgent)} |`,
    );
    lines.push(`| proxy RSS, MiB, first third → last third | ${pair(soak.proxyRss)} |`);
    lines.push(`| agent RSS, MiB, first third → last third | ${pair(soak.agentRss)} |`);
    lines.push(
      `| open descriptors proxy, agent, first third → last third | ${pair(soak.proxyFds)}, ${pair(soak.agentFds)} |`,
    );
    lines.push(`| listener warnings (MaxListenersExceededWarning) | ${soak.warnings} |`);
    lines.push(`| SIGTERM afterwards: proxy gone in, s (exit code) | ${fmt(soak.exitSeconds)} (${soak.exitCode}) |`);
    lines.push('');
  }
  if (idle) {
    lines.push('| idle proxy (tower only, file store) | value |');
    lines.push('| --- | ---: |');
    lines.push(`| CPU with no cluster, % of a core | ${fmt(idle.none)} |`);
    lines.push(`| CPU with ${idle.clusters} clusters, % of a core | ${fmt(idle.many)} |`);
    lines.push('');
  }
  if (scale) {
    lines.push('| scale (tower only) | value |');
    lines.push('| --- | ---: |');
    lines.push(`| idle agents on one proxy | ${scale.agents} |`);
    lines.push(`| proxy RSS with them, MiB | ${fmt(scale.proxyRssMiB)} |`);
    lines.push(`| proxy RSS per agent, KiB | ${fmt(scale.perAgentKiB)} |`);
    lines.push(`| handshakes per second (all agents dialing at once) | ${fmt(scale.handshakesPerSecond)} |`);
    lines.push(`| all agents back after a proxy restart, s | ${fmt(scale.reconnectSeconds)} |`);
  }
  if (outage) {
    lines.push('', `| outage (tower only, ${outage.agents} agents, default backoff) | value |`, '| --- | ---: |');
    lines.push(`| proxy down, s | ${outage.outageSeconds} |`);
    lines.push(`| first agent back after the proxy serves again, s | ${fmt(outage.firstSeconds)} |`);
    lines.push(`| all agents back after the proxy serves again, s | ${fmt(outage.allSeconds)} |`);
  }
  if (metrics) {
    lines.push(
      '',
      `| /metrics (tower only, ${metrics.clusters} clusters with agents and requests) | value |`,
      '| --- | ---: |',
    );
    lines.push(`| scrape, p50 ms | ${fmt(metrics.p50ms)} |`);
    lines.push(`| scrape, max of 20, ms | ${fmt(metrics.maxms)} |`);
    lines.push(`| size, MiB | ${fmt(metrics.bytes / 2 ** 20)} |`);
    lines.push('');
  }
  if (clusters) {
    lines.push('| Kubernetes mode (tower only) | value |');
    lines.push('| --- | ---: |');
    lines.push(`| Clusters applied at once (one kubectl apply) | ${clusters.clusters} |`);
    lines.push(`| all initialized (ports, token, Service, endpoints, condition), s | ${fmt(clusters.initSeconds)} |`);
    lines.push(`| Clusters initialized per second | ${fmt(clusters.perSecond)} |`);
    lines.push(`| port allocations (one per Cluster when none is repeated) | ${clusters.allocations} |`);
    lines.push(`| proxy CPU for it, s | ${fmt(clusters.cpuInit)} |`);
    lines.push(`| proxy RSS serving them (two ports each), MiB | ${fmt(clusters.rss)} |`);
    lines.push(`| restart to serving again, s | ${fmt(clusters.restartSeconds)} |`);
    lines.push(`| API writes after that restart | ${clusters.writesAfterRestart} |`);
    lines.push('');
  }
  if (replicas) {
    lines.push(
      `| replicas (tower only, ${replicas.agents} agents of one cluster, 3 replicas behind haproxy) | value |`,
      '| --- | ---: |',
    );
    lines.push(`| every agent holds a session, s | ${fmt(replicas.firstSession)} |`);
    lines.push(`| every agent holds a session to all three replicas, s | ${fmt(replicas.everySession)} |`);
    lines.push(`| sessions per replica | ${replicas.perReplica.join(' / ')} |`);
    lines.push(`| RSS per replica, MiB | ${replicas.rss.map((r) => fmt(r)).join(' / ')} |`);
    lines.push(
      `| a replica restarted (SIGTERM, start): every agent holds it again, s after it served | ${fmt(replicas.rejoin)} |`,
    );
    lines.push('');
  }
  if (stalled) lines.push(...stalledTable(stalled, fmt));
  lines.push(
    `(${new Date().toISOString()}, ${elapsed.toFixed(0)} s, ${QUICK ? 'quick' : 'default'} settings${AGENT_ARGS.length ? `, agent ${AGENT_ARGS.join(' ')}` : ''}; ratios > 1 are better for higher-is-better figures, < 1 for latencies)`,
  );
  console.log(lines.join('\n'));
  if (JSON_OUT)
    writeFileSync(
      JSON_OUT,
      JSON.stringify(
        {
          rows,
          usage: [...merged.values()],
          memory,
          hops,
          soak,
          idle,
          scale,
          clusters,
          replicas,
          stalled,
          elapsedSeconds: elapsed,
          quick: QUICK,
        },
        null,
        2,
      ),
    );
}

function cleanup(): void {
  stopHost();
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
}

main().then(
  () => {
    cleanup();
    process.exit(0);
  },
  (err: Error) => {
    log(err.stack ?? err.message);
    cleanup();
    process.exit(1);
  },
);
