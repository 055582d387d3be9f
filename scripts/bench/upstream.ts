// The benchmark's upstream: HTTPS with keep-alive, in a process of its own.
//   /bulk?bytes=N   N bytes of body
//   /small          a 200-byte JSON document
//   /watch?n=K      a chunked stream with one 200-byte event per second, K events
// Usage: node upstream.ts CERT KEY CA  → prints the port.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

const [cert, key, ca] = process.argv.slice(2).map((p) => readFileSync(p));
const SMALL = Buffer.from(
  JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Success', message: 'x'.repeat(124) }),
);
const CHUNK = Buffer.alloc(256 * 1024, 0x61);
const EVENT = Buffer.from(
  JSON.stringify({ type: 'MODIFIED', object: { kind: 'ConfigMap', data: { v: 'y'.repeat(140) } } }) + '\n',
);

const server = createServer(
  { cert, key, ca, requestCert: true, rejectUnauthorized: true, keepAliveTimeout: 60_000 },
  (req, res) => {
    const url = new URL(req.url ?? '/', 'https://x');
    if (url.pathname === '/small') {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': SMALL.length });
      res.end(SMALL);
    } else if (url.pathname === '/bulk') {
      const total = Number(url.searchParams.get('bytes'));
      let sent = 0;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
      const pump = () => {
        while (sent < total) {
          const n = Math.min(CHUNK.length, total - sent);
          sent += n;
          if (!res.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
    } else if (url.pathname === '/watch') {
      let left = Number(url.searchParams.get('n') ?? '10');
      res.writeHead(200, { 'content-type': 'application/json' });
      res.flushHeaders();
      const timer = setInterval(() => {
        res.write(EVENT);
        if (--left <= 0) {
          clearInterval(timer);
          res.end();
        }
      }, 1000);
      res.on('close', () => clearInterval(timer));
    } else {
      res.writeHead(404);
      res.end();
    }
  },
);
server.listen(0, '127.0.0.1', () => console.log((server.address() as { port: number }).port));
process.on('SIGTERM', () => process.exit(0));
