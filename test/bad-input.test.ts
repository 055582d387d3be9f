import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createPrivateKey, webcrypto } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import ssh2 from 'ssh2';
import WebSocket from 'ws';
import { parse } from 'yaml';
import { dialWebSocket } from '../src/agent/dial.ts';
import * as x509 from '@peculiar/x509';
import { CertificateAuthority } from '../src/pki/ca.ts';
import { PEER_URI_PREFIX } from '../src/proxy/peer-protocol.ts';
import type { TunnelClient } from '../src/tunnel/ssh.ts';
import { pattern } from './support/pattern.ts';
import { kubectl, Stack } from './support/stack.ts';
import { freePort, removeDir, tempDir, tower, waitUntil } from './support/tower.ts';
import { TestUpstream } from './support/upstream.ts';

let upstream: TestUpstream;
let stack: Stack;
let kc: string;

/** Sends raw bytes to the agent port and returns all it answers until it closes the connection. */
async function rawExchange(bytes: string, end: boolean): Promise<string> {
  const sock = connect(stack.agentPort, '127.0.0.1');
  if (end) sock.end(bytes);
  else sock.write(bytes);
  let answer = '';
  sock.setEncoding('latin1').on('data', (d: string) => {
    answer += d;
  });
  await once(sock, 'close');
  return answer;
}

/** The proxy still serves the healthy cluster: the point of every test here. */
async function stillServing() {
  const r = await kubectl(kc, ['get', '--raw', '/api']);
  assert.equal(r.code, 0, `the proxy stopped serving others: ${r.stderr}`);
  assert.match(r.stdout, /APIVersions/);
}

before(async () => {
  upstream = await TestUpstream.start();
  stack = new Stack();
  await stack.startProxy();
  const { token } = await stack.token('healthy');
  const agent = stack.startAgent(
    'healthy',
    token,
    upstream.writeKubeconfig(join(stack.dataDir, 'u.kubeconfig'), 'token'),
  );
  await agent.waitFor(/connected to proxy/);
  kc = await stack.kubeconfig('healthy');
  await stack.token('idle');
});

after(async () => {
  await stack?.close();
  await upstream?.close();
});

describe('agents with bad credentials', () => {
  test('a wrong token: the agent exits non-zero naming the problem and the fix', async () => {
    const agent = stack.startAgent('healthy', 'f'.repeat(64), join(stack.dataDir, 'u.kubeconfig'));
    const code = await agent.exited;
    assert.equal(code, 1);
    assert.match(
      agent.output,
      pattern(
        /tower agent: the proxy refused agent "healthy": Unauthorized agent /,
        /\(check --name and --token; the proxy's host prints them with: tower token healthy\)/,
      ),
    );
    await stack.proxy!.waitFor(/agent refused: wrong token cluster=healthy/);
    await stillServing();
  });

  test('an unregistered cluster name is refused the same way', async () => {
    const agent = stack.startAgent('nobody', 'f'.repeat(64), join(stack.dataDir, 'u.kubeconfig'));
    assert.equal(await agent.exited, 1);
    assert.match(agent.output, /Unauthorized agent/);
    await stack.proxy!.waitFor(/agent refused: unknown cluster cluster=nobody/);
    await stillServing();
  });

  test('a proxy whose host key does not match --proxy-fingerprint is refused', async () => {
    const { token } = await stack.token('idle');
    const wrong = 'SHA256:' + 'A'.repeat(43);
    const agent = stack.startAgent('idle', token, join(stack.dataDir, 'u.kubeconfig'), [
      '--proxy-fingerprint',
      wrong,
      '--max-retry',
      '1',
    ]);
    assert.equal(await agent.exited, 1);
    assert.match(agent.output, /the proxy's host key is SHA256:\S+, not SHA256:A{43} as --proxy-fingerprint demands/);
    await stillServing();
  });

  test('--max-retry: an agent that cannot reach the proxy gives up with the last error', async () => {
    const dead = await freePort();
    const agent = stack.startAgent('idle', 'f'.repeat(64), join(stack.dataDir, 'u.kubeconfig'), [
      '--proxy-server',
      `http://127.0.0.1:${dead}`,
      '--max-retry',
      '2',
      '--max-retry-interval',
      '1s',
    ]);
    assert.equal(await agent.exited, 1);
    assert.match(
      agent.output,
      pattern(
        /tower agent: gave up after 2 failed attempts \(--max-retry 2\): /,
        /cannot reach the proxy at ws:\/\/127\.0\.0\.1:\d+: .*ECONNREFUSED/,
      ),
    );
  });
});

describe('garbage on the agent port', () => {
  test('bytes that are not HTTP get a 400 and the connection is closed', async () => {
    const answer = await rawExchange('\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n', true);
    assert.match(answer, /^HTTP\/1\.1 400 Bad Request/);
    await stack.proxy!.waitFor(/dropped a connection that does not speak HTTP on the agent port/);
    await stillServing();
  });

  test('/health and /version answer; other paths are 404', async () => {
    const get = async (p: string) => {
      const r = await fetch(`${stack.proxyUrl}${p}`);
      return [r.status, await r.text()];
    };
    assert.deepEqual(await get('/health'), [200, 'OK\n']);
    assert.deepEqual(await get('/version'), [200, '0.1.0\n']);
    assert.equal((await get('/nope'))[0], 404);
  });

  test('a WebSocket without the kubesphere-v1 subprotocol is refused', async () => {
    const answer = await rawExchange(
      'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      false,
    );
    assert.match(answer, /^HTTP\/1\.1 400 Bad Request[^]*WebSocket subprotocol must be kubesphere-v1/);
  });

  test('non-SSH bytes inside the WebSocket end that connection only', async () => {
    const ws = new WebSocket(stack.proxyUrl, 'kubesphere-v1');
    await once(ws, 'open');
    ws.send(Buffer.from('this is not an SSH identification line\r\n'));
    await once(ws, 'close');
    await stillServing();
  });

  test('an oversized WebSocket message closes the connection (1009)', async () => {
    const ws = new WebSocket(stack.proxyUrl, 'kubesphere-v1');
    await once(ws, 'open');
    ws.send(Buffer.alloc(1024 * 1024));
    const [code] = await once(ws, 'close');
    assert.equal(code, 1009);
    await stillServing();
  });

  test('a malformed config payload is answered with the reason, then the connection is closed', async () => {
    const { stream, features } = await dialWebSocket(stack.proxyUrl.replace('http', 'ws'), { timeoutMs: 5000 });
    assert.deepEqual(
      features,
      ['tls-at-agent', 'auth-at-agent', 'replicas'],
      'the proxy offers its extensions in the 101',
    );
    const client = new ssh2.Client() as TunnelClient;
    client.on('error', () => {});
    client.connect({ sock: stream as never, username: '', password: '', ident: 'SSH-kubesphere-v1-client' });
    await once(client, 'ready');
    const reply = await new Promise<{ failed: boolean; text: string }>((resolve) =>
      client.globalRequest('config', Buffer.from('{"Name": "healthy", "Token": '), (failed, data) =>
        resolve({ failed, text: data?.toString() ?? '' }),
      ),
    );
    assert.equal(reply.failed, true);
    assert.match(reply.text, /^malformed config payload: /);
    await once(client, 'close');
    await stillServing();
  });
});

describe('the gateway', () => {
  function gatewayStatus(cert?: { cert: string; key: string }, path = '/clusters/healthy/api') {
    const doc = parse(readFileSync(kc, 'utf8'));
    return new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: stack.gatewayPort,
          path,
          ca: Buffer.from(doc.clusters[0].cluster['certificate-authority-data'], 'base64'),
          ...cert,
        },
        (res) => {
          let body = '';
          res
            .setEncoding('utf8')
            .on('data', (d: string) => {
              body += d;
            })
            .on('end', () => resolve({ status: res.statusCode!, body }));
        },
      );
      req.on('error', reject);
      req.end();
    });
  }

  test('no client certificate: 401, nothing forwarded', async () => {
    const before = upstream.auth.length;
    const r = await gatewayStatus();
    assert.equal(r.status, 401);
    assert.match(JSON.parse(r.body).message, /a client certificate signed by tower's CA is required/);
    assert.equal(upstream.auth.length, before);
  });

  test('a client certificate from another CA: 401, nothing forwarded', async () => {
    const other = await CertificateAuthority.load(await CertificateAuthority.create('impostor'), 'test');
    const before = upstream.auth.length;
    const r = await gatewayStatus(await other.issueClient('mallory', ['system:masters']));
    assert.equal(r.status, 401);
    assert.match(JSON.parse(r.body).message, /\(this connection has a certificate that tower's CA did not sign\)/);
    assert.equal(upstream.auth.length, before);
  });

  test(
    "certificates of tower's CA that OpenSSL would refuse are refused here too: " +
      'expired, or meant for servers (401, nothing forwarded)',
    async () => {
      // the gateway checks client certificates itself (see src/proxy/client-certificate.ts)
      const ca = await CertificateAuthority.load(
        {
          cert: readFileSync(join(stack.dataDir, 'ca.crt'), 'utf8'),
          key: readFileSync(join(stack.dataDir, 'ca.key'), 'utf8'),
        },
        'test',
      );
      const before = upstream.auth.length;
      const expired = await gatewayStatus(await ca.issueClient('old', ['system:masters'], -1, 'healthy'));
      assert.equal(expired.status, 401);
      assert.match(JSON.parse(expired.body).message, /\(this connection has a certificate that expired .*\)/);
      const server = await gatewayStatus(await ca.issueServer(['healthy.example']));
      assert.equal(server.status, 401);
      assert.match(
        JSON.parse(server.body).message,
        /\(this connection has a certificate not meant for client authentication\)/,
      );
      assert.equal(upstream.auth.length, before);
      await stillServing();
    },
  );

  test(
    "certificates OpenSSL's clientAuth check refuses are refused: an unknown critical " +
      'extension, a key usage without digitalSignature, a CA (401, nothing forwarded)',
    async () => {
      const caPem = readFileSync(join(stack.dataDir, 'ca.crt'), 'utf8');
      const caKey = await webcrypto.subtle.importKey(
        'pkcs8',
        createPrivateKey(readFileSync(join(stack.dataDir, 'ca.key'), 'utf8')).export({ format: 'der', type: 'pkcs8' }),
        { name: 'ECDSA', namedCurve: 'P-256' },
        false,
        ['sign'],
      );
      const issuer = new x509.X509Certificate(caPem);
      /** a client certificate of tower's CA for cluster "healthy", with these extensions besides its name */
      const craft = async (extensions: x509.Extension[]) => {
        const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
          'sign',
          'verify',
        ])) as webcrypto.CryptoKeyPair;
        const cert = await x509.X509CertificateGenerator.create({
          serialNumber: '0' + Date.now().toString(16),
          subject: 'CN=mallory, O=system:masters',
          issuer: issuer.subject,
          notBefore: new Date(Date.now() - 60_000),
          notAfter: new Date(Date.now() + 3_600_000),
          signingKey: caKey as never,
          publicKey: keys.publicKey as never,
          signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
          extensions: [
            new x509.SubjectAlternativeNameExtension([{ type: 'url', value: 'urn:tower:cluster:healthy' }]),
            ...extensions,
          ],
        });
        const key = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey))
          .toString('base64')
          .replace(/.{64}/g, '$&\n');
        return { cert: cert.toString('pem'), key: `-----BEGIN PRIVATE KEY-----\n${key}\n-----END PRIVATE KEY-----\n` };
      };
      const clientAuth = new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]);
      // the control: the same crafting with what tower issues is accepted (then 200 from the member)
      const good = await gatewayStatus(
        await craft([clientAuth, new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true)]),
      );
      assert.equal(good.status, 200, good.body);
      const before = upstream.auth.length;
      const cases: [x509.Extension[], RegExp][] = [
        [
          [clientAuth, new x509.Extension('1.3.6.1.4.1.99999.1', true, new Uint8Array([5, 0]))],
          /an unknown critical extension 1\.3\.6\.1\.4\.1\.99999\.1/,
        ],
        [
          [clientAuth, new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyEncipherment, true)],
          /key usage does not allow signing/,
        ],
        [[clientAuth, new x509.BasicConstraintsExtension(true, undefined, true)], /a CA certificate/],
      ];
      for (const [extensions, why] of cases) {
        const r = await gatewayStatus(await craft(extensions));
        assert.equal(r.status, 401, r.body);
        assert.match(JSON.parse(r.body).message, why);
      }
      assert.equal(upstream.auth.length, before, 'nothing was forwarded');
      await stillServing();
    },
  );

  test(
    "a replica's certificate means nothing where there are no " +
      'replicas (file mode): no peer API, no forwarded identity',
    async () => {
      const ca = await CertificateAuthority.load(
        {
          cert: readFileSync(join(stack.dataDir, 'ca.crt'), 'utf8'),
          key: readFileSync(join(stack.dataDir, 'ca.key'), 'utf8'),
        },
        'test',
      );
      const peer = await ca.issueClient('tower-replica:r9', [], 1, undefined, [`${PEER_URI_PREFIX}r9`]);
      const before = upstream.requests.length;
      const api = await gatewayStatus(peer, '/peer/v1/sessions?cluster=healthy');
      assert.equal(api.status, 403);
      assert.match(JSON.parse(api.body).message, /for other replicas/);
      const posing = await gatewayStatus(peer, '/clusters/healthy/api');
      assert.equal(posing.status, 403);
      assert.match(JSON.parse(posing.body).message, /not bound to a cluster/);
      assert.equal(upstream.requests.length, before, 'nothing was forwarded');
    },
  );

  test('a bound certificate gets the same answer for another cluster and for one that does not exist', async () => {
    const missing = await kubectl(kc, ['get', '--raw', '/clusters/nosuch/api']);
    const other = await kubectl(kc, ['get', '--raw', '/clusters/idle/api']);
    assert.notEqual(missing.code, 0);
    assert.match(
      missing.stderr,
      /Error from server \(Forbidden\): tower gateway: this client certificate is for cluster "healthy", not "nosuch"/,
    );
    assert.equal(other.stderr.replaceAll('idle', 'nosuch'), missing.stderr, 'existence must not show');
    await stillServing();
  });

  test("a certificate of tower's CA that names no cluster is refused on the shared gateway", async () => {
    const ca = await CertificateAuthority.load(
      {
        cert: readFileSync(join(stack.dataDir, 'ca.crt'), 'utf8'),
        key: readFileSync(join(stack.dataDir, 'ca.key'), 'utf8'),
      },
      'test',
    );
    const before = upstream.requests.length;
    const r = await gatewayStatus(await ca.issueClient('someone', ['system:masters']));
    assert.equal(r.status, 403);
    assert.match(
      JSON.parse(r.body).message,
      /this client certificate is not bound to a cluster .*--allow-unbound-certificates/,
    );
    assert.equal(upstream.requests.length, before, 'nothing forwarded');
  });

  test('a cluster with no agent: 503 naming the cluster', async () => {
    const idle = await stack.kubeconfig('idle');
    // not a discovery path: discovery's answer is text (operable.test.ts)
    const r = await kubectl(idle, ['get', '--raw', '/api/v1/namespaces']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /cluster "idle" has no agent connected to tower/);
  });

  test('a certificate of one cluster is refused for another (403)', async () => {
    const idle = await stack.kubeconfig('idle');
    const r = await kubectl(idle, ['get', '--raw', '/clusters/healthy/api']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /this client certificate is for cluster "idle", not "healthy"/);
  });

  test('a cluster name like ../x in the path: 400, no file or cluster touched', async () => {
    const r = await kubectl(kc, ['get', '--raw', '/clusters/..%2Fx/api']);
    assert.notEqual(r.code, 0);
    // kubectl may resolve the dot-segment itself; the gateway refuses the name either way
    assert.match(r.stderr, /\(BadRequest\): tower gateway: invalid cluster name "\.\.(\/x)?"/);
  });
});

describe('commands', () => {
  test('tower token ../x exits non-zero with the rule for names', async () => {
    const r = await tower(['token', '../x'], stack.env);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tower token: invalid cluster name "\.\.\/x": a cluster name must be a DNS-1123 label/);
    assert.equal(r.stderr.trim().split('\n').length, 1);
  });

  test('a bad option value names its source and what is wanted', async () => {
    const env = await tower(['proxy'], { ...stack.env, TOWER_PORT: 'eighty' });
    assert.equal(env.code, 1);
    assert.match(env.stderr, /invalid --port value "eighty" from environment variable TOWER_PORT: want an integer/);
    const flag = await tower(['agent', '--name', 'a', '--token', 't', '--keepalive', '10x']);
    assert.equal(flag.code, 1);
    assert.match(flag.stderr, /invalid --keepalive value "10x" from flag --keepalive: want a duration such as 30s/);
  });

  test('a second proxy on the same data dir is refused while the first runs', async () => {
    const r = await tower(['proxy', '--host', '127.0.0.1', '--port', '0', '--gateway-port', '0'], stack.env);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      new RegExp(
        `^tower proxy: another proxy \\(pid ${stack.proxy!.pid}\\) serves .*; ` +
          `stop it, or give this one its own --data-dir\n$`,
      ),
    );
    await stillServing();
  });

  test('a proxy on a taken port says so, and exits', async () => {
    const other = tempDir('other');
    try {
      const r = await tower(
        ['proxy', '--host', '127.0.0.1', '--port', '0', '--gateway-port', String(stack.gatewayPort)],
        { TOWER_HOME: other },
      );
      assert.equal(r.code, 1);
      assert.match(
        r.stderr,
        new RegExp(
          `127\\.0\\.0\\.1:${stack.gatewayPort} is already in use ` +
            `\\(another proxy running\\? choose another --gateway-port\\)`,
        ),
      );
    } finally {
      removeDir(other);
    }
    await stillServing();
  });
});

test('the proxy logged every refusal and is still running', async () => {
  assert.ok(stack.proxy!.running);
  await waitUntil('status of healthy', () =>
    readFileSync(join(stack.dataDir, 'status', 'healthy.yaml'), 'utf8').includes('connected: true'),
  );
});
