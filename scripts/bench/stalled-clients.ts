// The client side of the stalled workload (workloads/stalled.ts), in a process of its own:
//   node stalled-clients.ts clients HOST PORT CA CERT KEY PATH N
// opens N TLS connections with the gateway client certificate, sends one GET on each and pauses the
// socket at the first bytes of the answer; prints {"answered":N,"ok":k,"codes":{...}} once every one has
// an answer head (or failed), then holds them until killed.
//   node stalled-clients.ts fetch HOST PORT CA CERT KEY PATH
// fetches one whole download, read to the end; prints {"bytes":n}.
import { readFileSync } from 'node:fs';
import { connect } from 'node:tls';

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

clientsMain(process.argv.slice(2));
