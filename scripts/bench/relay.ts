// The floor of one relay on tower's runtime: the least an HTTP-aware hop can do in Node 24.
// Node's own HTTPS server (client certificates required, as the gateway does) and its HTTPS client
// with a keep-alive pool to the upstream, nothing else: no routing, identity, SSH or WebSocket.
// One such process does one TLS termination and one TLS origination, where tower's proxy and
// agent do one TLS and one SSH layer each.
// Usage: node relay.ts UPSTREAM_PORT CA CERT KEY CLIENT_CERT CLIENT_KEY  → prints the port.
import { readFileSync } from 'node:fs';
import { Agent, createServer, request } from 'node:https';

const [upstreamPort, ca, cert, key, clientCert, clientKey] = process.argv.slice(2);
const read = (p: string | undefined) => readFileSync(p!);
const pool = new Agent({
  keepAlive: true,
  maxSockets: 256,
  maxFreeSockets: 256,
  ca: read(ca),
  cert: read(clientCert),
  key: read(clientKey),
});

const server = createServer(
  {
    cert: read(cert),
    key: read(key),
    ca: read(ca),
    requestCert: true,
    rejectUnauthorized: true,
    keepAliveTimeout: 60_000,
  },
  (req, res) => {
    const up = request(
      {
        host: '127.0.0.1',
        port: Number(upstreamPort),
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent: pool,
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    up.on('socket', (s) => s.setNoDelay(true));
    up.on('error', () => res.destroy());
    req.pipe(up);
  },
);
server.listen(0, '127.0.0.1', () => console.log((server.address() as { port: number }).port));
