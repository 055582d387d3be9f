import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { kubectl, Stack } from './support/stack.ts';
import { TowerProcess } from './support/tower.ts';
import { TestUpstream } from './support/upstream.ts';

let upstream: TestUpstream;
let stack: Stack;
let connectProxy: Server;
let connectPort: number;
const connects: string[] = [];
const tunnels: Socket[] = [];

before(async () => {
  upstream = await TestUpstream.start();
  stack = new Stack();
  await stack.startProxy();
  // an HTTP CONNECT proxy that knows the tower proxy as "tower-proxy.test"
  connectProxy = createServer((_req, res) => {
    res.writeHead(405);
    res.end();
  });
  connectProxy.on('connect', (req, client: Socket, head: Buffer) => {
    connects.push(req.url ?? '');
    const [host, port] = (req.url ?? '').split(':');
    if (host !== 'tower-proxy.test') {
      client.end('HTTP/1.1 403 Forbidden\r\n\r\n');
      return;
    }
    const server = connect(Number(port), '127.0.0.1', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) server.write(head);
      server.pipe(client);
      client.pipe(server);
    });
    tunnels.push(server, client);
    server.on('error', () => client.destroy());
    client.on('error', () => server.destroy());
  });
  await new Promise<void>((resolve) => connectProxy.listen(0, '127.0.0.1', resolve));
  connectPort = (connectProxy.address() as { port: number }).port;
});

after(async () => {
  await stack?.close();
  await upstream?.close();
  for (const s of tunnels) s.destroy();
  connectProxy?.close();
});

test('the agent reaches the proxy through HTTP_PROXY (CONNECT), resolving nothing itself', async () => {
  const { token } = await stack.token('proxied');
  const agent = new TowerProcess(
    'agent proxied',
    [
      'agent',
      '--name',
      'proxied',
      '--token',
      token,
      '--proxy-server',
      `http://tower-proxy.test:${stack.agentPort}`,
      '--proxy-fingerprint',
      stack.fingerprint,
      '--kubeconfig',
      upstream.writeKubeconfig(join(stack.dataDir, 'p.kubeconfig'), 'cert'),
    ],
    { HTTP_PROXY: `http://127.0.0.1:${connectPort}`, NO_PROXY: 'example.com' },
  );
  stack.processes.push(agent);
  await agent.waitFor(/connected to proxy/);
  assert.deepEqual(connects, [`tower-proxy.test:${stack.agentPort}`]);
  const r = await kubectl(await stack.kubeconfig('proxied'), ['get', '--raw', '/api']);
  assert.equal(r.code, 0, r.stderr);
});

test('NO_PROXY and loopback targets bypass the proxy, as in Go', async () => {
  const before = connects.length;
  const { token } = await stack.token('direct');
  const agent = stack.startAgent(
    'direct',
    token,
    upstream.writeKubeconfig(join(stack.dataDir, 'd.kubeconfig'), 'cert'),
  );
  await agent.waitFor(/connected to proxy/);
  const bypass = new TowerProcess(
    'agent bypass',
    [
      'agent',
      '--name',
      'direct',
      '--token',
      token,
      '--proxy-server',
      `http://tower-proxy.test:${stack.agentPort}`,
      '--proxy-fingerprint',
      stack.fingerprint,
      '--kubeconfig',
      join(stack.dataDir, 'd.kubeconfig'),
      '--max-retry',
      '1',
    ],
    { HTTP_PROXY: `http://127.0.0.1:${connectPort}`, NO_PROXY: '.test' },
  );
  stack.processes.push(bypass);
  assert.equal(await bypass.exited, 1);
  assert.match(bypass.output, /cannot reach the proxy at ws:\/\/tower-proxy\.test:\d+: .*(ENOTFOUND|EAI_AGAIN)/);
  assert.equal(connects.length, before);
});

test('a rotated token file is re-read and announced by reconnecting', async () => {
  const tokenFile = join(stack.dataDir, 'sa-token');
  writeFileSync(tokenFile, upstream.token);
  const kc = join(stack.dataDir, 'tokenfile.kubeconfig');
  writeFileSync(
    kc,
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        {
          name: 'u',
          cluster: {
            server: `https://${upstream.hostPort}`,
            'certificate-authority-data': Buffer.from(upstream.caPem).toString('base64'),
          },
        },
      ],
      users: [{ name: 'u', user: { tokenFile } }],
      contexts: [{ name: 'u', context: { cluster: 'u', user: 'u' } }],
      'current-context': 'u',
    }),
  );
  const { token } = await stack.token('rotating');
  const agent = stack.startAgent('rotating', token, kc);
  await agent.waitFor(/connected to proxy/);
  const gw = await stack.kubeconfig('rotating');
  assert.equal((await kubectl(gw, ['get', '--raw', '/api'])).code, 0);
  assert.equal(upstream.lastToken, upstream.token);

  const rotated = 'rotated-' + upstream.token;
  upstream.extraTokens.add(rotated);
  const mark = agent.output.length;
  writeFileSync(tokenFile, rotated);
  await agent.waitFor(/disconnected from proxy; reconnecting why=.*the token in .*sa-token rotated/, 25_000, mark);
  await agent.waitFor(/connected to proxy/, 10_000, mark);
  const r = await kubectl(gw, ['get', '--raw', '/api']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(upstream.lastToken, rotated);
});

test("tower kubeconfig --user and --group become the certificate's CN and O", async () => {
  const kc = await stack.kubeconfig('direct', ['--user', 'jane', '--group', 'viewers,auditors']);
  const doc = parse(readFileSync(kc, 'utf8'));
  const cert = new X509Certificate(Buffer.from(doc.users[0].user['client-certificate-data'], 'base64'));
  assert.match(cert.subject, /CN=jane/);
  assert.match(cert.subject, /O=viewers/);
  assert.match(cert.subject, /O=auditors/);
  assert.match(cert.subjectAltName ?? '', /URI:urn:tower:cluster:direct/);
  const ca = new X509Certificate(Buffer.from(doc.clusters[0].cluster['certificate-authority-data'], 'base64'));
  assert.ok(cert.verify(ca.publicKey), "signed by tower's CA");
  assert.ok(new Date(cert.validTo) <= new Date(ca.validTo), 'never outlives the CA');
});

test(
  '--no-tls-at-agent: the proxy makes the TLS with ' + 'the announced client certificate, as with Go agents',
  async () => {
    const { token } = await stack.token('classic');
    const agent = stack.startAgent(
      'classic',
      token,
      upstream.writeKubeconfig(join(stack.dataDir, 'c.kubeconfig'), 'cert'),
      ['--no-tls-at-agent'],
    );
    await agent.waitFor(/connected to proxy/);
    await stack.proxy!.waitFor(/agent connected cluster=classic .*auth="client certificate" upstreamTls=proxy/);
    const kc = await stack.kubeconfig('classic');
    const r = await kubectl(kc, ['get', '--raw', '/api']);
    assert.equal(r.code, 0, r.stderr);
    const exec = await kubectl(kc, ['exec', '-i', 'echo', '--', 'cat'], "upgrade through the proxy's TLS\n");
    assert.equal(exec.code, 0, exec.stderr);
    assert.equal(exec.stdout, "upgrade through the proxy's TLS\n");
  },
);
