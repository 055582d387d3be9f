// floor: one minimal Node HTTPS relay (scripts/bench/relay.ts), measured beside bulk and small: what a
// single HTTP-aware hop costs on tower's runtime, against which each of tower's two hops compares.
import { benchScript, type Bench, type Endpoint, type PathName, type Usage } from '../context.ts';
import { fmt, ratio } from '../format.ts';
import { median } from '../proc.ts';
import { BULK_RUNS, bulkBytes } from './bulk.ts';
import { SMALL_CONCURRENCY } from './small.ts';

export interface Floor {
  pid: number;
  ep: Endpoint;
  bulk: { mbps: number; cpu: number; peak: number }[];
  small: Record<number, { rps: number; p50: number; p99: number; cpuUs: number }>;
}

/** Starts the relay in front of the upstream, with the upstream's own certificates. */
export async function startFloor(bench: Bench): Promise<Floor> {
  const f = bench.pki.files;
  const relay = bench.spawn('relay', process.execPath, [
    benchScript('relay.ts'),
    String(bench.upstreamPort),
    ...[f.ca, f.cert, f.key, f.clientCert, f.clientKey],
  ]);
  const port = Number((await relay.waitFor(/^(\d+)$/m))[1]);
  const ep = { host: '127.0.0.1', port, prefix: '', ca: f.ca, cert: f.clientCert, key: f.clientKey };
  return { pid: relay.pid, ep, bulk: [], small: {} };
}

/**
 * The floor table: the relay beside OpenSSH's two processes and tower's two, from the same run. Where
 * tower's figure is near the relay's, tower's hop costs what any HTTP-aware hop on its runtime does, and
 * a goal beyond the relay's figure is beyond the runtime's.
 */
export function floorTable(bench: Bench, usage: Map<string, Usage>): string[] {
  const f = bench.floor!;
  const bytes = bulkBytes(bench);
  const row = (w: string, p: PathName) => usage.get(`${w}|${p}`);
  const value = (w: string, figure: string, p: PathName) =>
    bench.rows.find((r) => r.workload === w && r.figure.startsWith(figure))?.values[p];
  /** CPU per request of both relaying processes, µs: [sum, first, second] */
  const perRequest = (c: number, p: PathName): [number, number, number] | undefined => {
    const u = row(`small c=${c}`, p);
    const n = bench.smallCounts[c]?.[p];
    return u && n ? [((u.cpuA + u.cpuB) * 1e6) / n, (u.cpuA * 1e6) / n, (u.cpuB * 1e6) / n] : undefined;
  };
  const perGiB = (p: PathName): [number, number, number] | undefined => {
    const u = row('bulk', p);
    const gib = (BULK_RUNS * bytes) / 2 ** 30;
    return u ? [(u.cpuA + u.cpuB) / gib, u.cpuA / gib, u.cpuB / gib] : undefined;
  };
  const split = (v?: [number, number, number]) => (v ? `${fmt(v[0])} (${fmt(v[1])} + ${fmt(v[2])})` : '–');
  const bulkMed = f.bulk.length ? median(f.bulk.map((b) => b.mbps)) : undefined;
  const relayGiB = f.bulk.length
    ? f.bulk.reduce((a, b) => a + b.cpu, 0) / ((f.bulk.length * bytes) / 2 ** 30)
    : undefined;
  const relayPeak = f.bulk.length ? Math.max(...f.bulk.map((b) => b.peak)) : undefined;
  const peak = (p: PathName) => {
    const u = row('bulk', p);
    return u ? Math.max(u.peakA, u.peakB) : undefined;
  };
  const lines = [
    '| one HTTP-aware hop on Node 24 (floor): a minimal Node HTTPS relay, one process | openssh (ssh + sshd) | ' +
      'Node relay | tower (proxy + agent) | Node relay/openssh | tower/openssh |',
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
  for (const c of SMALL_CONCURRENCY) {
    const s = f.small[c];
    if (!s) continue;
    const w = `small c=${c}`;
    if (c === 64) line(`${w}, requests/s`, value(w, 'requests/s', 'openssh'), s.rps, value(w, 'requests/s', 'tunnel'));
    line(`${w}, p50 latency, ms`, value(w, 'p50', 'openssh'), s.p50, value(w, 'p50', 'tunnel'));
    line(`${w}, p99 latency, ms`, value(w, 'p99', 'openssh'), s.p99, value(w, 'p99', 'tunnel'));
    const o = perRequest(c, 'openssh');
    const t = perRequest(c, 'tunnel');
    line(`${w}, CPU per request, µs (all relaying processes)`, o?.[0], s.cpuUs, t?.[0], split(o), split(t));
  }
  if (bulkMed !== undefined) {
    line(
      `bulk ${bytes / 2 ** 20} MiB, MB/s (median of ${f.bulk.length})`,
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
