// Downloads whose clients stop reading: what they hold is bounded and released when they leave, and past
// --max-stalled-memory (the proxy's, the agent's) new requests get a 429 Status instead of the process growing.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { parse } from 'yaml';
import { pattern } from './support/pattern.ts';
import { Stack } from './support/stack.ts';
import { waitUntil, type TowerProcess } from './support/tower.ts';
import { TestUpstream } from './support/upstream.ts';

/** far more than a stalled client ever reads: the member never runs out */
const ENDLESS_BYTES = 1e12;
/** a download that a reading client finishes */
const WHOLE_BYTES = 32 * 2 ** 20;

let upstream: TestUpstream;

before(async () => {
  upstream = await TestUpstream.start();
});
after(async () => {
  await upstream?.close();
});

interface Tls {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}
interface Cluster {
  stack: Stack;
  agent: TowerProcess;
  tls: Tls;
  agentMetrics: string;
  name: string;
}

/**
 * A proxy (with `proxyArgs`) and one agent serving /metrics (with `agentArgs`) for cluster `name`, and a gateway client
 * certificate.
 */
async function cluster(name: string, proxyArgs: string[] = [], agentArgs: string[] = []): Promise<Cluster> {
  const stack = new Stack();
  await stack.startProxy(proxyArgs);
  const { token } = await stack.token(name);
  const agent = stack.startAgent(
    name,
    token,
    upstream.writeKubeconfig(join(stack.dataDir, `${name}.kubeconfig`), 'token'),
    ['--health-port', '0', '--health-host', '127.0.0.1', ...agentArgs],
  );
  await agent.waitFor(/connected to proxy/);
  const port = (await agent.waitFor(/health and metrics serving address=127\.0\.0\.1:(\d+)/))[1];
  const kc = parse(readFileSync(await stack.kubeconfig(name), 'utf8'));
  const b64 = (s: string) => Buffer.from(s, 'base64');
  const user = kc.users[0].user;
  const tls = {
    ca: b64(kc.clusters[0].cluster['certificate-authority-data']),
    cert: b64(user['client-certificate-data']),
    key: b64(user['client-key-data']),
  };
  return { stack, agent, tls, agentMetrics: `http://127.0.0.1:${port}/metrics`, name };
}

/** The sum of a metric's series, from Prometheus text. */
async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(url)).text();
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'gm'))) sum += Number(m[1]);
  return sum;
}
const proxyMetric = (c: Cluster, name: string) => metric(`${c.stack.proxyUrl}/metrics`, name);
const agentMetric = (c: Cluster, name: string) => metric(c.agentMetrics, name);

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** One request on a connection of its own, read to the end. */
function get(c: Cluster, path: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port: c.stack.gatewayPort, path: `/clusters/${c.name}${path}`, agent: false, ...c.tls },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

interface Stalled {
  socket: TLSSocket;
  statusLine: string;
  bodyRead: number;
}

/** A download whose client reads the answer's first bytes and then stops reading. */
async function stalledDownload(c: Cluster, bytes = ENDLESS_BYTES): Promise<Stalled> {
  const socket = connect({ host: '127.0.0.1', port: c.stack.gatewayPort, ...c.tls });
  socket.on('error', () => {});
  socket.write(`GET /clusters/${c.name}/download?bytes=${bytes} HTTP/1.1\r\nHost: tower\r\n\r\n`);
  const first = await new Promise<Buffer>((resolve, reject) => {
    socket.once('data', (d: Buffer) => {
      socket.pause();
      resolve(d);
    });
    socket.once('close', () => reject(new Error('the gateway closed the download before answering')));
  });
  const headEnd = first.indexOf('\r\n\r\n');
  assert.ok(headEnd > 0, 'the answer head came in one piece');
  return { socket, statusLine: first.toString('latin1').split('\r\n')[0]!, bodyRead: first.length - headEnd - 4 };
}

/** Reads the rest of a stalled download: resolves with the body's length once all `total` bytes have come. */
function readRest(s: Stalled, total: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let body = s.bodyRead;
    s.socket.on('data', (d: Buffer) => {
      body += d.length;
      if (body >= total) {
        s.socket.destroy();
        resolve(body);
      }
    });
    s.socket.once('close', () => {
      if (body < total) reject(new Error(`the download ended after ${body} of ${total} bytes`));
    });
    s.socket.resume();
  });
}

describe('a download whose client stops reading', () => {
  let c: Cluster;
  before(async () => {
    c = await cluster('stalls');
  });
  after(async () => {
    await c?.stack.close();
  });

  test(
    'holds its channel only while its client is there: ' +
      'once the clients leave, proxy and agent hold the channels they held before',
    async () => {
      // a request first: the pools hold what they keep between requests
      assert.equal((await get(c, '/api')).status, 200);
      const proxyBefore = await proxyMetric(c, 'tower_proxy_channels_open');
      const agentBefore = await agentMetric(c, 'tower_agent_channels_open');
      const stalled = await Promise.all([stalledDownload(c), stalledDownload(c), stalledDownload(c)]);
      assert.deepEqual(
        stalled.map((s) => s.statusLine),
        Array(3).fill('HTTP/1.1 200 OK'),
      );
      // each holds what it is allowed to, and is counted as stalled on both sides
      await waitUntil(
        'the proxy to count the three answers as stalled',
        async () => (await proxyMetric(c, 'tower_proxy_stalled_memory_bytes')) >= 3 * 2 ** 21,
      );
      await waitUntil(
        'the agent to count the three answers as stalled',
        async () => (await agentMetric(c, 'tower_agent_stalled_memory_bytes')) >= 3 * 3 * 2 ** 16,
      );
      // (one of them may have taken the channel the first request left in the pool)
      await waitUntil(
        'the proxy to hold their channels',
        async () => (await proxyMetric(c, 'tower_proxy_channels_open')) >= 3,
      );
      for (const s of stalled) s.socket.destroy();
      await waitUntil(
        `the proxy to release the stalled channels (it held ${proxyBefore} before)`,
        async () => (await proxyMetric(c, 'tower_proxy_channels_open')) <= proxyBefore,
      );
      await waitUntil(
        'the agent to release them',
        async () => (await agentMetric(c, 'tower_agent_channels_open')) <= agentBefore,
      );
      await waitUntil(
        'the proxy to release their reservations',
        async () => (await proxyMetric(c, 'tower_proxy_stalled_memory_bytes')) === 0,
      );
      await waitUntil(
        'the agent to release theirs',
        async () => (await agentMetric(c, 'tower_agent_stalled_memory_bytes')) === 0,
      );
      assert.equal((await get(c, '/api')).status, 200);
    },
  );

  test('costs its client nothing but time: once it reads again, the whole download arrives', async () => {
    const s = await stalledDownload(c, WHOLE_BYTES);
    await waitUntil(
      'the proxy to count the answer as stalled',
      async () => (await proxyMetric(c, 'tower_proxy_stalled_memory_bytes')) > 0,
    );
    assert.equal(await readRest(s, WHOLE_BYTES), WHOLE_BYTES);
    await waitUntil(
      'the stalled reservation to be released',
      async () => (await proxyMetric(c, 'tower_proxy_stalled_memory_bytes')) === 0,
    );
  });
});

describe("the proxy's --max-stalled-memory", () => {
  let c: Cluster;
  // one stalled answer fills it
  before(async () => {
    c = await cluster('capped', ['--max-stalled-memory', '1']);
  });
  after(async () => {
    await c?.stack.close();
  });

  test(
    'past it, new requests and upgrades get a 429 Status with Retry-After naming the flag; ' +
      'the stalled download carries on when read, and once stalled clients read or leave, requests succeed again',
    async () => {
      assert.equal((await get(c, '/api')).status, 200);
      const stalled = await stalledDownload(c, WHOLE_BYTES);
      assert.equal(stalled.statusLine, 'HTTP/1.1 200 OK');
      await waitUntil(
        'the proxy to count the answer as stalled',
        async () => (await proxyMetric(c, 'tower_proxy_stalled_memory_bytes')) > 0,
      );

      const refused = await get(c, '/api');
      assert.equal(refused.status, 429);
      assert.equal(refused.headers['retry-after'], '1');
      const status = JSON.parse(refused.body.toString('utf8'));
      assert.equal(status.kind, 'Status');
      assert.equal(status.reason, 'TooManyRequests');
      assert.equal(status.details.retryAfterSeconds, 1);
      assert.match(
        status.message,
        pattern(
          /^tower gateway: answers whose clients stopped reading hold [\d.]+ MiB in this proxy, /,
          /its limit of 0\.0 MiB \(the proxy's --max-stalled-memory\); retry shortly$/,
        ),
      );
      assert.equal(
        (await stalledDownload(c)).statusLine,
        'HTTP/1.1 429 Too Many Requests',
        'another download is refused as well',
      );

      // an upgrade (kubectl exec) is refused alike, before anything reaches the member
      const upgrade = connect({ host: '127.0.0.1', port: c.stack.gatewayPort, ...c.tls });
      upgrade.on('error', () => {});
      upgrade.write(
        `GET /clusters/${c.name}/api/v1/namespaces/default/pods/echo/exec?command=true HTTP/1.1\r\n` +
          `Host: tower\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n` +
          `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n`,
      );
      const answer = await new Promise<string>((resolve) => {
        let text = '';
        upgrade.setEncoding('latin1').on('data', (d: string) => {
          text += d;
        });
        upgrade.on('close', () => resolve(text));
      });
      assert.match(answer, /^HTTP\/1\.1 429 Too Many Requests\r\n/);
      assert.match(answer, /\r\nRetry-After: 1\r\n/);
      assert.match(answer, /--max-stalled-memory/);
      await waitUntil(
        'the refusals to be counted',
        async () => (await proxyMetric(c, 'tower_proxy_stalled_refusals_total')) === 3,
      );

      // admitted before the limit was reached: once its client reads again, the download arrives whole
      assert.equal(await readRest(stalled, WHOLE_BYTES), WHOLE_BYTES);
      await waitUntil(
        'the reservation to be released',
        async () => (await proxyMetric(c, 'tower_proxy_stalled_memory_bytes')) === 0,
      );
      assert.equal((await get(c, '/api')).status, 200);

      // and a stalled client that leaves frees the way too
      const leaver = await stalledDownload(c);
      await waitUntil(
        'the proxy to count the answer as stalled',
        async () => (await proxyMetric(c, 'tower_proxy_stalled_memory_bytes')) > 0,
      );
      assert.equal((await get(c, '/api')).status, 429);
      leaver.socket.destroy();
      await waitUntil(
        'the reservation to be released',
        async () => (await proxyMetric(c, 'tower_proxy_stalled_memory_bytes')) === 0,
      );
      assert.equal((await get(c, '/api')).status, 200);
    },
  );
});

describe("the agent's --max-stalled-memory", () => {
  let c: Cluster;
  before(async () => {
    c = await cluster('agentcap', [], ['--max-stalled-memory', '1']);
  });
  after(async () => {
    await c?.stack.close();
  });

  test(
    'past it, the agent answers requests 429 itself, on channels it had and on new ones, ' +
      'naming its flag; once the stalled client leaves requests succeed again',
    async () => {
      // leaves an idle channel in the proxy's pool
      assert.equal((await get(c, '/api')).status, 200);
      const stalled = await stalledDownload(c);
      await waitUntil(
        'the agent to count the answer as stalled',
        async () => (await agentMetric(c, 'tower_agent_stalled_memory_bytes')) > 0,
      );
      const before = upstream.requests.length;
      // the first goes on the idle channel, the second on a new one (the refusal ended the first)
      for (let i = 0; i < 2; i++) {
        const refused = await get(c, '/api');
        assert.equal(refused.status, 429);
        assert.equal(refused.headers['retry-after'], '1');
        const status = JSON.parse(refused.body.toString('utf8'));
        assert.equal(status.reason, 'TooManyRequests');
        assert.match(
          status.message,
          pattern(
            /^tower agent of cluster "agentcap": answers the tunnel cannot take /,
            /\(their clients stopped reading\) hold [\d.]+ MiB there, /,
            /the agent's limit of 0\.0 MiB \(its --max-stalled-memory\); retry shortly$/,
          ),
        );
      }
      assert.equal(upstream.requests.length, before, 'nothing reached the member');
      await waitUntil(
        'the refusals to be counted',
        async () => (await agentMetric(c, 'tower_agent_stalled_refusals_total')) === 2,
      );
      stalled.socket.destroy();
      await waitUntil(
        'the agent to release the stalled answer',
        async () => (await agentMetric(c, 'tower_agent_stalled_memory_bytes')) === 0,
      );
      assert.equal((await get(c, '/api')).status, 200);
    },
  );
});
