// bulk: one large GET fetched by curl on every path (and through the floor's Node relay), median of 3.
import { run } from '../../../test/support/tower.ts';
import { PATHS, type Bench, type Endpoint, type PathName, type Workload } from '../context.ts';
import { median, sampled } from '../proc.ts';

export const BULK_RUNS = 3;
const CURL_TIMEOUT_MS = 10 * 60_000;

export const bulkBytes = (bench: Bench): number => (bench.flags.quick ? 256 : 1024) * 2 ** 20;

/** curl (C, OpenSSL) fetches the body: the Node client tops out below the direct path's speed */
async function curlBulk(ep: Endpoint, path: string): Promise<{ bytes: number; seconds: number }> {
  const r = await run(
    'curl',
    [
      ...['-s', '-o', '/dev/null', '-w', '%{size_download} %{time_total}'],
      ...['--cacert', ep.ca, '--cert', ep.cert, '--key', ep.key],
      `https://${ep.host}:${ep.port}${ep.prefix}${path}`,
    ],
    { timeoutMs: CURL_TIMEOUT_MS },
  );
  const [bytes, seconds] = r.stdout.trim().split(' ').map(Number);
  if (r.code === 0 && bytes && seconds) return { bytes, seconds };
  throw new Error(`curl ${path} on ${ep.port} failed (${r.code}): ${r.stdout}`);
}

export const bulk: Workload<void> = {
  name: 'bulk',
  runsFor: ['bulk', 'floor'],
  async run(bench) {
    const bytes = bulkBytes(bench);
    const path = `/bulk?bytes=${bytes}`;
    const speeds: Record<PathName, number[]> = { direct: [], openssh: [], tunnel: [] };
    const floor = bench.floor;
    for (let i = 0; i < BULK_RUNS; i++) {
      for (const p of PATHS) {
        const r = await bench.measured('bulk', p, () => curlBulk(bench.endpoints[p], path));
        if (r.bytes !== bytes) throw new Error(`bulk on ${p}: ${r.bytes} of ${bytes} bytes`);
        speeds[p].push(r.bytes / 1e6 / r.seconds);
      }
      if (floor) {
        const f = await sampled([floor.pid], () => curlBulk(floor.ep, path));
        if (f.r.bytes !== bytes) throw new Error(`bulk through the Node relay: ${f.r.bytes} of ${bytes} bytes`);
        floor.bulk.push({ mbps: f.r.bytes / 1e6 / f.r.seconds, cpu: f.cpu[0]!, peak: f.peak[0]! });
      }
    }
    bench.rows.push({
      workload: 'bulk',
      figure: `GET ${bytes / 2 ** 20} MiB (curl), median of ${BULK_RUNS}`,
      unit: 'MB/s',
      better: 'higher',
      values: Object.fromEntries(PATHS.map((p) => [p, median(speeds[p])])),
    });
    const node = await bench.load(bench.endpoints.direct, { mode: 'bulk', path });
    bench.log(
      `load generator check: the Node client gets ${(node.bytes! / 1e6 / node.seconds!).toFixed(0)} MB/s direct, ` +
        `curl ${median(speeds.direct).toFixed(0)} MB/s`,
    );
  },
};
