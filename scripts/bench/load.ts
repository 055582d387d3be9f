// The benchmark's load generator, in a process of its own so that it does not share an event loop
// with what it measures. Reads one JSON job from argv, prints one JSON result.
//   bulk:  GET `path` once, count bytes → { bytes, seconds }
//   small: `concurrency` loops of GET `path` for `seconds` → { requests, seconds, p50, p99 } (ms)
//   watch: `streams` concurrent GETs of a stream, count events until they end → { events, seconds }
//   soak:  `requests` GETs by `concurrency` loops, mixed sizes (every 10th 64 KiB), every `freshEvery`th
//          (50) on a fresh connection, while `streams` watches open and end again → { requests, failed, seconds }
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';

interface Job {
  mode: 'bulk' | 'small' | 'watch' | 'soak';
  host: string;
  port: number;
  path: string;
  ca: string;
  cert: string;
  key: string;
  concurrency?: number;
  seconds?: number;
  streams?: number;
  requests?: number;
  freshEvery?: number;
}
const job = JSON.parse(process.argv[2]!) as Job;
const tls = { ca: readFileSync(job.ca), cert: readFileSync(job.cert), key: readFileSync(job.key) };
const agent = new Agent({ keepAlive: true, maxSockets: Math.max(job.concurrency ?? 1, job.streams ?? 1), ...tls });

function get(path: string, onData?: (d: Buffer) => void, fresh = false): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: job.host,
        port: job.port,
        path,
        agent: fresh ? new Agent({ keepAlive: false, ...tls }) : agent,
        servername: undefined,
      },
      (res) => {
        let bytes = 0;
        if (res.statusCode !== 200) reject(new Error(`HTTP ${res.statusCode} for ${path}`));
        res.on('data', (d: Buffer) => {
          bytes += d.length;
          onData?.(d);
        });
        res.on('end', () => resolve(bytes));
        res.on('error', reject);
      },
    );
    req.setNoDelay(true);
    req.on('error', reject);
    req.end();
  });
}

async function main(): Promise<unknown> {
  if (job.mode === 'bulk') {
    const t0 = process.hrtime.bigint();
    const bytes = await get(job.path);
    return { bytes, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
  }
  if (job.mode === 'small') {
    // warm every connection first: the figures are of requests on kept-alive connections, not of handshakes
    await Promise.all(Array.from({ length: job.concurrency ?? 1 }, () => get(job.path)));
    const latencies: number[] = [];
    const end = Date.now() + (job.seconds ?? 10) * 1000;
    const t0 = process.hrtime.bigint();
    await Promise.all(
      Array.from({ length: job.concurrency ?? 1 }, async () => {
        while (Date.now() < end) {
          const s = process.hrtime.bigint();
          await get(job.path);
          latencies.push(Number(process.hrtime.bigint() - s) / 1e6);
        }
      }),
    );
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    latencies.sort((a, b) => a - b);
    const q = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]!;
    return { requests: latencies.length, seconds, p50: q(0.5), p99: q(0.99) };
  }
  if (job.mode === 'soak') {
    const total = job.requests ?? 100_000;
    const fresh = job.freshEvery ?? 50;
    const prefix = job.path.replace(/\/small$/, '');
    let started = 0;
    let failed = 0;
    const t0 = process.hrtime.bigint();
    const progress = setInterval(() => console.error(JSON.stringify({ done: started - failed })), 1000);
    const worker = async () => {
      while (started < total) {
        const n = started++;
        try {
          await get(n % 10 === 0 ? `${prefix}/bulk?bytes=65536` : job.path, undefined, fresh > 0 && n % fresh === 0);
        } catch {
          failed++;
        }
      }
    };
    const watcher = async () => {
      while (started < total)
        await get(`${prefix}/watch?n=2`).catch(() => {
          failed++;
        });
    };
    await Promise.all([
      ...Array.from({ length: job.concurrency ?? 32 }, worker),
      ...Array.from({ length: job.streams ?? 0 }, watcher),
    ]);
    clearInterval(progress);
    return { requests: started, failed, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
  }
  let events = 0;
  const t0 = process.hrtime.bigint();
  const results = await Promise.allSettled(
    Array.from({ length: job.streams ?? 1 }, () =>
      get(job.path, (d) => {
        for (const b of d) if (b === 0x0a) events++;
      }),
    ),
  );
  const failed = results.filter((r) => r.status === 'rejected').length;
  return { events, failed, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

main().then(
  (r) => {
    console.log(JSON.stringify(r));
    process.exit(0);
  },
  (err: Error) => {
    console.error(err.message);
    process.exit(1);
  },
);
