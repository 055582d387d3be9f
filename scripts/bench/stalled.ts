// The `stalled` workload: clients that send a GET for a download larger than anything will ever read,
// then stop reading it (as a kubectl whose terminal or pipe stopped, or a dead client behind a NAT that
// still holds the connection). Measures what a fresh proxy and agent hold for them: idle, with 24, with
// 200 (24 + 176 more), the same 200 after a malloc-trim check (src/observe/memory.ts, every 30 s), and
// once the clients have gone (what a stalled download leaves behind: memory and channels).
//
// As a script it is the client side:
//   node stalled.ts clients HOST PORT CA CERT KEY PATH N
// opens N TLS connections with the gateway client certificate, sends one GET on each and pauses the
// socket at the first bytes of the answer; prints {"answered":N,"ok":k,"codes":{...}} once every one has
// an answer head (or failed), then holds them until killed.
import type { ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { connect } from 'node:tls';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** far more than any stalled client reads: the upstream never runs out */
const DOWNLOAD_BYTES = 100e9;
/** stalled downloads at the first and the second step */
export const STALLED_STEPS = [24, 200] as const;
/** after load: longer than one of the relays' 30 s malloc-trim checks (src/observe/memory.ts) */
const TRIM_WAIT_MS = 35_000;
/** bytes through the tunnel and both RSS unchanged for this long: the buffers are full */
const SETTLE_QUIET_MS = 1500;
const SETTLE_LIMIT_MS = 120_000;

type Child = ChildProcess & { output: string };
export interface StalledHelpers {
  binary: string;
  work: string;
  upstreamPort: number;
  /** the upstream's CA (PEM) and a client certificate it accepts, for the member kubeconfig */
  upstreamCaPem: string;
  client: { cert: string; key: string };
  agentArgs: string[];
  env: NodeJS.ProcessEnv;
  start: (cmd: string, argv: string[], opts?: { env?: NodeJS.ProcessEnv }) => Child;
  waitOutput: (child: Child, re: RegExp, timeoutMs?: number, from?: number) => Promise<RegExpExecArray>;
  freePort: () => Promise<number>;
  log: (msg: string) => void;
}

/** one process's memory at one point: MiB */
export interface ProcessMemory {
  rss: number;
  /** VmHWM since the step began (peaks are reset before each step) */
  peak: number;
  /** V8 heap in use and external memory (Buffers and other memory V8 is told of), from /metrics */
  heap: number;
  external: number;
  /** channels open, as the process counts them (tower_proxy_channels_open, tower_agent_channels_open) */
  channels: number;
}
export interface StalledPoint {
  label: string;
  streams: number;
  ok: number;
  codes: Record<string, number>;
  settleSeconds: number;
  proxy: ProcessMemory;
  agent: ProcessMemory;
}
export interface StalledResult {
  points: StalledPoint[];
  agentArgs: string[];
}

function statusMiB(pid: number, key: string): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) / 1024;
}
function resetPeak(pid: number): void {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    /* older kernels: lifetime peak */
  }
}

async function scrape(url: string): Promise<string> {
  const r = await fetch(url);
  return r.text();
}
function metric(text: string, name: string): number {
  let sum = 0;
  let seen = false;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'gm'))) {
    sum += Number(m[1]);
    seen = true;
  }
  return seen ? sum : NaN;
}

async function memory(pid: number, metricsUrl: string, channelsMetric: string): Promise<ProcessMemory> {
  const text = await scrape(metricsUrl).catch(() => '');
  return {
    rss: statusMiB(pid, 'VmRSS'),
    peak: statusMiB(pid, 'VmHWM'),
    heap: metric(text, 'nodejs_heap_size_used_bytes') / 2 ** 20,
    external: metric(text, 'nodejs_external_memory_bytes') / 2 ** 20,
    channels: metric(text, channelsMetric),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A fresh proxy and agent (their own data dir, the bench's upstream), so that what earlier workloads
 * left in their heaps does not count; the agent serves /metrics on --health-port.
 */
async function setup(h: StalledHelpers) {
  const dir = join(h.work, 'stalled');
  mkdirSync(dir, { recursive: true });
  const env = { TOWER_HOME: dir };
  const agentPort = await h.freePort();
  const gatewayPort = await h.freePort();
  const healthPort = await h.freePort();
  const proxy = h.start(
    h.binary,
    ['proxy', '--host', '127.0.0.1', '--port', String(agentPort), '--gateway-port', String(gatewayPort)],
    { env: { ...env, ...h.env } },
  );
  await h.waitOutput(proxy, /proxy serving/);
  const tok = spawnSync(h.binary, ['token', 'stalled'], { env: { ...process.env, ...env }, encoding: 'utf8' });
  const token = /^token: (\w+)/m.exec(tok.stdout)![1]!;
  const fingerprint = /--proxy-fingerprint (\S+)/.exec(tok.stdout)![1]!;
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const memberKc = join(dir, 'member.kubeconfig');
  writeFileSync(
    memberKc,
    [
      'apiVersion: v1',
      'kind: Config',
      'current-context: c',
      `clusters: [{name: m, cluster: {server: "https://127.0.0.1:${h.upstreamPort}", certificate-authority-data: ${b64(h.upstreamCaPem)}}}]`,
      `users: [{name: u, user: {client-certificate-data: ${b64(h.client.cert)}, client-key-data: ${b64(h.client.key)}, token: bench-service-account-token}}]`,
      'contexts: [{name: c, context: {cluster: m, user: u}}]',
    ].join('\n') + '\n',
  );
  const agent = h.start(
    h.binary,
    [
      'agent',
      '--name',
      'stalled',
      '--token',
      token,
      '--proxy-server',
      `http://127.0.0.1:${agentPort}`,
      '--proxy-fingerprint',
      fingerprint,
      '--kubeconfig',
      memberKc,
      '--health-port',
      String(healthPort),
      '--health-host',
      '127.0.0.1',
      ...h.agentArgs,
    ],
    { env: h.env },
  );
  await h.waitOutput(agent, /connected to proxy/);
  const kc = spawnSync(h.binary, ['kubeconfig', 'stalled'], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
  }).stdout;
  const field = (k: string) => Buffer.from(new RegExp(`${k}: (\\S+)`).exec(kc)![1]!, 'base64');
  const gw = { ca: join(dir, 'gw-ca.crt'), cert: join(dir, 'gw.crt'), key: join(dir, 'gw.key') };
  writeFileSync(gw.ca, field('certificate-authority-data'));
  writeFileSync(gw.cert, field('client-certificate-data'));
  writeFileSync(gw.key, field('client-key-data'));
  return {
    proxy,
    agent,
    gatewayPort,
    proxyMetrics: `http://127.0.0.1:${agentPort}/metrics`,
    agentMetrics: `http://127.0.0.1:${healthPort}/metrics`,
    gw,
  };
}

export async function stalledWorkload(h: StalledHelpers): Promise<StalledResult> {
  const t = await setup(h);
  const pids = [t.proxy.pid!, t.agent.pid!] as const;
  const clientsScript = fileURLToPath(import.meta.url);
  const clients: Child[] = [];
  const open = (n: number) => {
    const c = h.start(process.execPath, [
      clientsScript,
      'clients',
      '127.0.0.1',
      String(t.gatewayPort),
      t.gw.ca,
      t.gw.cert,
      t.gw.key,
      `/clusters/stalled/bulk?bytes=${DOWNLOAD_BYTES}`,
      String(n),
    ]);
    clients.push(c);
    return c;
  };
  /** what the clients said: answers in all, and by status */
  const answers = async (): Promise<{ ok: number; codes: Record<string, number> }> => {
    const codes: Record<string, number> = {};
    let ok = 0;
    for (const c of clients) {
      const m = await h.waitOutput(c, /^(\{"answered".*\})$/m, SETTLE_LIMIT_MS);
      const a = JSON.parse(m[1]!) as { ok: number; codes: Record<string, number> };
      ok += a.ok;
      for (const [k, v] of Object.entries(a.codes)) codes[k] = (codes[k] ?? 0) + v;
    }
    return { ok, codes };
  };
  /** until the buffers are full: bytes through the agent connection and both RSS stop moving */
  const settle = async (): Promise<number> => {
    const t0 = Date.now();
    let last = '';
    let quietSince = Date.now();
    while (Date.now() - t0 < SETTLE_LIMIT_MS) {
      await sleep(250);
      const bytes = metric(await scrape(t.proxyMetrics).catch(() => ''), 'tower_proxy_tunnel_bytes_total');
      const now = JSON.stringify([bytes, ...pids.map((p) => Math.round(statusMiB(p, 'VmRSS')))]);
      if (now !== last) {
        last = now;
        quietSince = Date.now();
        continue;
      }
      if (Date.now() - quietSince >= SETTLE_QUIET_MS) break;
    }
    return (Date.now() - t0) / 1000;
  };
  const points: StalledPoint[] = [];
  const point = async (
    label: string,
    streams: number,
    settleSeconds: number,
    a = { ok: 0, codes: {} as Record<string, number> },
  ) => {
    const [proxy, agent] = await Promise.all([
      memory(pids[0], t.proxyMetrics, 'tower_proxy_channels_open'),
      memory(pids[1], t.agentMetrics, 'tower_agent_channels_open'),
    ]);
    points.push({ label, streams, ok: a.ok, codes: a.codes, settleSeconds, proxy, agent });
    h.log(
      `stalled: ${label}: proxy RSS ${proxy.rss.toFixed(0)} MiB (peak ${proxy.peak.toFixed(0)}), agent ${agent.rss.toFixed(0)} MiB (peak ${agent.peak.toFixed(0)})${streams ? `, ${a.ok} of ${streams} answered 200` : ''}`,
    );
  };
  // warm: a whole download through, so that code, pools and TLS contexts exist; then past a malloc-trim
  // check, or the idle figure would still hold what that download freed
  const warm = h.start(process.execPath, [
    clientsScript,
    'fetch',
    '127.0.0.1',
    String(t.gatewayPort),
    t.gw.ca,
    t.gw.cert,
    t.gw.key,
    `/clusters/stalled/bulk?bytes=${16 * 2 ** 20}`,
  ]);
  await h.waitOutput(warm, /^\{"bytes"/m, 60_000);
  await sleep(TRIM_WAIT_MS);
  await point('idle (after one 16 MiB download)', 0, await settle());
  let streams = 0;
  for (const n of STALLED_STEPS) {
    for (const p of pids) resetPeak(p);
    open(n - streams);
    streams = n;
    const a = await answers();
    await point(`${n} stalled downloads`, n, await settle(), a);
    // what stays: past a malloc-trim check, the pages the burst freed are handed back
    for (const p of pids) resetPeak(p);
    await sleep(TRIM_WAIT_MS);
    await point(`${n} stalled, ${TRIM_WAIT_MS / 1000} s later (past a malloc-trim check)`, n, await settle(), a);
  }
  for (const p of pids) resetPeak(p);
  for (const c of clients) {
    c.kill('SIGKILL');
  }
  await sleep(TRIM_WAIT_MS);
  await point(`the ${streams} clients gone, ${TRIM_WAIT_MS / 1000} s later`, 0, await settle());
  for (const c of [t.proxy, t.agent]) c.kill('SIGTERM');
  return { points, agentArgs: h.agentArgs };
}

/** The table `npm run bench` prints. */
export function stalledTable(r: StalledResult, fmt: (v?: number) => string): string[] {
  const idle = r.points[0]!;
  const lines = [
    `| stalled downloads (tower only; fresh proxy and agent${r.agentArgs.length ? `, agent ${r.agentArgs.join(' ')}` : ''}) | answered 200 | proxy RSS MiB (peak) | proxy heap + external MiB | proxy channels | agent RSS MiB (peak) | agent heap + external MiB | agent channels |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  const mem = (m: ProcessMemory) => `${fmt(m.rss)} (${fmt(m.peak)})`;
  const js = (m: ProcessMemory) => `${fmt(m.heap)} + ${fmt(m.external)}`;
  for (const p of r.points) {
    const other = Object.entries(p.codes)
      .filter(([k]) => k !== '200')
      .map(([k, v]) => `${v}× ${k}`)
      .join(', ');
    lines.push(
      `| ${p.label} | ${p.streams ? `${p.ok} of ${p.streams}${other ? ` (${other})` : ''}` : '–'} | ${mem(p.proxy)} | ${js(p.proxy)} | ${fmt(p.proxy.channels)} | ${mem(p.agent)} | ${js(p.agent)} | ${fmt(p.agent.channels)} |`,
    );
  }
  for (const p of r.points.filter((x) => x.streams > 0)) {
    const per = (m: ProcessMemory, i: ProcessMemory) =>
      `${fmt(m.rss - i.rss)} MiB, ${fmt(((m.rss - i.rss) * 1024) / p.streams)} KiB per stream (peak ${fmt(((m.peak - i.rss) * 1024) / p.streams)} KiB)`;
    lines.push(`| cost over idle: ${p.label} | | ${per(p.proxy, idle.proxy)} | | | ${per(p.agent, idle.agent)} | | |`);
  }
  lines.push('');
  return lines;
}

// ---------------------------------------------------------------------------------------------
// the client side, in a process of its own
function clientsMain(argv: string[]): void {
  const [mode, host, port, ca, cert, key, path, n = '0'] = argv as [
    string,
    string,
    string,
    string,
    string,
    string,
    string,
    string?,
  ];
  const tls = { host, port: Number(port), ca: readFileSync(ca), cert: readFileSync(cert), key: readFileSync(key) };
  if (mode === 'fetch') {
    // one whole download, read to the end
    const s = connect(tls, () => s.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`));
    let bytes = 0;
    s.on('data', (d: Buffer) => {
      bytes += d.length;
    });
    s.on('close', () => {
      console.log(JSON.stringify({ bytes }));
      process.exit(0);
    });
    s.on('error', () => undefined);
    return;
  }
  const total = Number(n);
  const codes: Record<string, number> = {};
  let answered = 0;
  const done = () => {
    if (++answered < total) return;
    console.log(JSON.stringify({ answered, ok: codes['200'] ?? 0, codes }));
  };
  const sockets = [];
  for (let i = 0; i < total; i++) {
    const s = connect(tls, () =>
      s.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: tower-bench-stalled\r\n\r\n`),
    );
    sockets.push(s);
    let first = true;
    s.on('data', (d: Buffer) => {
      if (!first) return;
      first = false;
      // stop reading: from here on only the kernel's socket buffers take what the gateway sends
      s.pause();
      const code = /^HTTP\/1\.1 (\d{3})/.exec(d.toString('latin1', 0, 16))?.[1] ?? 'malformed';
      codes[code] = (codes[code] ?? 0) + 1;
      done();
    });
    s.on('error', (err: NodeJS.ErrnoException) => {
      if (!first) return;
      first = false;
      codes[err.code ?? 'error'] = (codes[err.code ?? 'error'] ?? 0) + 1;
      done();
    });
  }
  setInterval(() => {}, 1 << 30);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) clientsMain(process.argv.slice(2));
