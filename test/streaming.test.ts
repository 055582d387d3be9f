import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parse } from 'yaml';
import { kubectl, Stack } from './support/stack.ts';
import { peakRssBytes } from './support/tower.ts';
import { TestUpstream } from './support/upstream.ts';

const MIB = 1024 * 1024;
const BODY_BYTES = 256 * MIB;
const RSS_LIMIT_BYTES = 200 * MIB;

let upstream: TestUpstream;
let stack: Stack;
let kc: string;
let agentPid: number;

before(async () => {
  upstream = await TestUpstream.start();
  stack = new Stack();
  await stack.startProxy();
  const { token } = await stack.token('gamma');
  const agent = stack.startAgent(
    'gamma',
    token,
    upstream.writeKubeconfig(join(stack.dataDir, 'upstream.kubeconfig'), 'cert'),
  );
  await agent.waitFor(/connected to proxy/);
  agentPid = agent.pid;
  kc = await stack.kubeconfig('gamma');
});

after(async () => {
  await stack?.close();
  await upstream?.close();
});

// kubectl (1.30 and later) execs over WebSocket, v5.channel.k8s.io, when the server speaks it, as this
// stand-in does; the v1.20 node of test/cluster speaks SPDY only, and kubectl falls back to it there
test('kubectl exec through the tunnel: stdin echoed to stdout, the exit status carried back', async () => {
  const ok = await kubectl(kc, ['exec', '-i', 'echo', '--', 'cat'], 'hello through the tunnel\n');
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, 'hello through the tunnel\n');
  const failed = await kubectl(kc, ['exec', '-i', 'echo', '--', 'exit', '3'], 'x');
  assert.equal(failed.code, 3, failed.stderr);
  assert.equal(failed.stdout, 'x');
});

/** An HTTPS request through the gateway with the kubeconfig's client certificate. */
function gatewayRequest(method: string, path: string, body?: () => AsyncGenerator<Buffer>, kubeconfig = kc) {
  const doc = parse(readFileSync(kubeconfig, 'utf8'));
  const server = new URL(doc.clusters[0].cluster.server);
  const b64 = (s: string) => Buffer.from(s, 'base64');
  return new Promise<{ status: number; bytes: number; text: string }>((resolve, reject) => {
    const req = request(
      {
        host: server.hostname,
        port: server.port,
        method,
        path: server.pathname + path,
        ca: b64(doc.clusters[0].cluster['certificate-authority-data']),
        cert: b64(doc.users[0].user['client-certificate-data']),
        key: b64(doc.users[0].user['client-key-data']),
        headers: body ? { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } : {},
      },
      (res) => {
        let bytes = 0;
        let text = '';
        res.on('data', (d: Buffer) => {
          bytes += d.length;
          if (text.length < 1000) text += d.toString('latin1');
        });
        res.on('end', () => resolve({ status: res.statusCode!, bytes, text }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    if (!body) {
      req.end();
      return;
    }
    (async () => {
      for await (const chunk of body()) if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      req.end();
    })().catch(reject);
  });
}

test(
  'a 256 MiB upload and a 256 MiB download stream ' + 'through while proxy and agent stay under 200 MiB RSS',
  async () => {
    const chunk = Buffer.alloc(MIB, 1);
    async function* body() {
      for (let i = 0; i < BODY_BYTES / MIB; i++) yield chunk;
    }
    const up = await gatewayRequest('POST', '/upload', body);
    assert.equal(up.status, 200, up.text);
    assert.equal(JSON.parse(up.text).bytes, BODY_BYTES);

    const down = await gatewayRequest('GET', `/download?bytes=${BODY_BYTES}`);
    assert.equal(down.status, 200);
    assert.equal(down.bytes, BODY_BYTES);

    const proxyPeak = peakRssBytes(stack.proxy!.pid);
    const agentPeak = peakRssBytes(agentPid);
    assert.ok(proxyPeak < RSS_LIMIT_BYTES, `proxy peak RSS ${(proxyPeak / MIB).toFixed(0)} MiB`);
    assert.ok(agentPeak < RSS_LIMIT_BYTES, `agent peak RSS ${(agentPeak / MIB).toFixed(0)} MiB`);
    console.log(`# peak RSS: proxy ${(proxyPeak / MIB).toFixed(0)} MiB, agent ${(agentPeak / MIB).toFixed(0)} MiB`);
  },
);

test("over a slow link the agent's queued SSH packets still leave in frames the proxy accepts", async () => {
  // a relay that lets ~16 MB/s through from agent to proxy; eight downloads at once keep 16 MiB of
  // SSH window in flight, more than the kernel buffers, so the agent's WebSocket queue grows
  const BYTES_PER_MS = 16_000;
  const relay = createServer((fromAgent) => {
    const toProxy = connect(stack.agentPort, '127.0.0.1');
    toProxy.pipe(fromAgent);
    fromAgent.on('data', (d: Buffer) => {
      toProxy.write(d);
      fromAgent.pause();
      setTimeout(() => fromAgent.resume(), Math.ceil(d.length / BYTES_PER_MS));
    });
    fromAgent.on('end', () => toProxy.end());
    const close = () => {
      fromAgent.destroy();
      toProxy.destroy();
    };
    fromAgent.on('error', close);
    toProxy.on('error', close);
    fromAgent.on('close', close);
    toProxy.on('close', close);
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  try {
    const { token } = await stack.token('slow');
    const agent = stack.startAgent('slow', token, join(stack.dataDir, 'upstream.kubeconfig'), [
      '--proxy-server',
      `http://127.0.0.1:${(relay.address() as { port: number }).port}`,
    ]);
    await agent.waitFor(/connected to proxy/);
    const slowKc = await stack.kubeconfig('slow');
    const downs = await Promise.all(
      Array.from({ length: 8 }, () => gatewayRequest('GET', `/download?bytes=${8 * MIB}`, undefined, slowKc)),
    );
    for (const d of downs) assert.deepEqual([d.status, d.bytes], [200, 8 * MIB]);
    assert.doesNotMatch(agent.output, /disconnected from proxy/);
    await agent.stop();
  } finally {
    relay.close();
  }
});

test("the upstream saw the agent's client certificate, never a caller's credentials", () => {
  assert.ok(upstream.auth.length > 0);
  assert.deepEqual([...new Set(upstream.auth)], ['cert']);
});
