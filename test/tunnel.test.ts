import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import ssh2 from 'ssh2';
import { Logger } from '../src/observe/log.ts';
import { CertificateAuthority } from '../src/pki/ca.ts';
import { ConfigRejectedError } from '../src/errors.ts';
import { dialTunnel } from '../src/tunnel/client.ts';
import {
  CHANNEL_TYPE,
  CLIENT_IDENT,
  decodeConfig,
  decodeReplicaView,
  encodeConfig,
  encodeReplicaView,
  SERVER_IDENT,
  UNAUTHORIZED,
  type AgentConfig,
} from '../src/tunnel/protocol.ts';
import { WatchFrames } from '../src/proxy/gateway/watch-frames.ts';
import { TunnelServer, type AgentSession } from '../src/tunnel/server.ts';
import { generateHostKey, hostKeyFingerprint, type TunnelClient } from '../src/tunnel/ssh.ts';

const quiet = new Logger({ verbosity: -1, format: 'text' });
const hostKey = generateHostKey();
const sockets: Socket[] = [];
after(() => {
  for (const s of sockets) s.destroy();
});

/** Two connected loopback sockets, and every byte each side sent. */
async function socketPair(): Promise<{ a: Socket; b: Socket; fromA: Buffer[]; fromB: Buffer[] }> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = once(server, 'connection');
  const a = connect((server.address() as { port: number }).port, '127.0.0.1');
  const [b] = (await accepted) as [Socket];
  server.close();
  const fromA: Buffer[] = [];
  const fromB: Buffer[] = [];
  b.on('data', (d: Buffer) => fromA.push(d));
  a.on('data', (d: Buffer) => fromB.push(d));
  sockets.push(a, b);
  return { a, b, fromA, fromB };
}

const caPem = (await CertificateAuthority.create('config-test-ca')).cert;
const config: AgentConfig = {
  version: 'v-test',
  name: 'alpha',
  token: 't0k3n',
  kubernetesSvcHost: '10.0.0.1:443',
  kubesphereSvcHost: 'ks:80',
  caData: Buffer.from(caPem),
  bearerToken: Buffer.from('bearer'),
};

function serve(b: Socket, verdict: string | undefined = undefined, timeoutMs = 5000): Promise<AgentSession> {
  return new TunnelServer(hostKey).accept(b, {
    remote: 'test',
    authorize: async () => verdict,
    handshakeTimeoutMs: timeoutMs,
    log: quiet,
  });
}

describe('wire protocol v1 on the patched ssh2', () => {
  test('both sides send the Go tower identification strings, byte for byte, and still agree on keys', async () => {
    const { a, b, fromA, fromB } = await socketPair();
    const [session, client] = await Promise.all([
      serve(b),
      dialTunnel(a, { config, handshakeTimeoutMs: 5000, onChannel: (_h, _t, _acc, rej) => rej() }),
    ]);
    assert.ok(
      Buffer.concat(fromA)
        .toString('latin1')
        .startsWith(CLIENT_IDENT + '\r\n'),
    );
    assert.ok(
      Buffer.concat(fromB)
        .toString('latin1')
        .startsWith(SERVER_IDENT + '\r\n'),
    );
    assert.equal(client.hostKeyFingerprint, hostKeyFingerprint(hostKey));
    assert.equal(session.config.name, 'alpha');
    assert.equal(session.config.token, 't0k3n');
    assert.equal(session.config.kubernetesSvcHost, '10.0.0.1:443');
    assert.equal(session.config.bearerToken?.toString(), 'bearer');
    client.close();
    await once(session, 'close');
  });

  test('a refused config carries its text in the failure payload, and the connection is closed', async () => {
    const { a, b } = await socketPair();
    const served = serve(b, UNAUTHORIZED);
    await assert.rejects(
      dialTunnel(a, { config, handshakeTimeoutMs: 5000, onChannel: () => {} }),
      (err: Error) => err instanceof ConfigRejectedError && err.message === UNAUTHORIZED,
    );
    await assert.rejects(served, /Unauthorized agent/);
    if (!b.destroyed) await once(b, 'close');
  });

  test('a kubesphere channel carries the raw host:port as extra data; data flows both ways', async () => {
    const { a, b } = await socketPair();
    const seen: string[] = [];
    const [session, client] = await Promise.all([
      serve(b),
      dialTunnel(a, {
        config,
        handshakeTimeoutMs: 5000,
        onChannel: (hostPort, _type, accept, reject) => {
          seen.push(hostPort);
          if (hostPort !== '10.0.0.1:443') {
            reject();
            return;
          }
          const ch = accept();
          ch.on('data', (d: Buffer) => ch.write(Buffer.from(d.toString().toUpperCase())));
        },
      }),
    ]);
    const ch = await session.openChannel('10.0.0.1:443');
    ch.write('ping over the channel');
    const [echo] = await once(ch, 'data');
    assert.equal(echo.toString(), 'PING OVER THE CHANNEL');
    await assert.rejects(
      session.openChannel('169.254.169.254:80'),
      /the agent refused a channel to 169\.254\.169\.254:80/,
    );
    assert.deepEqual(seen, ['10.0.0.1:443', '169.254.169.254:80']);
    ch.close();
    client.close();
  });

  test('keepalive pings are answered', async () => {
    const { a, b } = await socketPair();
    const [session, client] = await Promise.all([
      serve(b),
      dialTunnel(a, { config, handshakeTimeoutMs: 5000, onChannel: () => {} }),
    ]);
    const before = session.lastSeen.getTime();
    await new Promise((r) => setTimeout(r, 5));
    await client.ping(2000);
    await client.ping(2000);
    assert.ok(session.lastSeen.getTime() > before);
    client.close();
  });

  test('channels an agent tries to open are refused', async () => {
    const { a, b } = await socketPair();
    const served = serve(b);
    const client = new ssh2.Client() as TunnelClient;
    client.connect({ sock: a as never, username: '', password: '', ident: CLIENT_IDENT });
    await once(client, 'ready');
    client.globalRequest('config', encodeConfig(config), () => {});
    await served;
    const err = await new Promise<Error | undefined>((resolve) =>
      client.forwardOut('127.0.0.1', 1, '127.0.0.1', 22, (e) => resolve(e)),
    );
    assert.match(String(err), /prohibited|rejected|failure/i);
    const err2 = await new Promise<Error | undefined>((resolve) => client.exec('id', (e) => resolve(e)));
    assert.ok(err2, 'a session channel must be refused');
    client.end();
  });

  test('no config within the deadline: the connection is closed', async () => {
    const { a, b } = await socketPair();
    const served = serve(b, undefined, 300);
    const client = new ssh2.Client();
    client.on('error', () => {});
    client.connect({ sock: a as never, username: '', password: '', ident: CLIENT_IDENT });
    await assert.rejects(served, /no valid config request within 300 ms/);
    await once(client, 'close');
  });
});

describe('the config payload', () => {
  test('keys decode case-insensitively and byte fields from base64, as Go does', () => {
    const c = decodeConfig(
      Buffer.from(
        JSON.stringify({
          name: 'a',
          TOKEN: 't',
          kubernetessvchost: 'k:443',
          KubeSphereSvcHost: 'ks:80',
          cadata: Buffer.from(caPem).toString('base64'),
          Unknown: 1,
        }),
      ),
    );
    assert.equal(c.name, 'a');
    assert.equal(c.token, 't');
    assert.equal(c.kubernetesSvcHost, 'k:443');
    assert.equal(c.caData?.toString(), caPem);
  });

  test("what we send is what Go's encoding/json writes for the Go tower's Config", () => {
    const json = JSON.parse(encodeConfig(config).toString());
    assert.deepEqual(Object.keys(json), [
      'Version',
      'Name',
      'Token',
      'KubernetesSvcHost',
      'KubeSphereSvcHost',
      'CAData',
      'BearerToken',
    ]);
    assert.equal(json.CAData, Buffer.from(caPem).toString('base64'));
  });

  test('malformed payloads are refused with a reason', () => {
    assert.throws(() => decodeConfig(Buffer.from('{')), /malformed config payload/);
    assert.throws(() => decodeConfig(Buffer.from('[]')), /want a JSON object/);
    assert.throws(() => decodeConfig(Buffer.from('{"Name": 5}')), /field Name must be a string/);
    assert.throws(() => decodeConfig(Buffer.from('{"CAData": "%%%"}')), /field CAData must be base64/);
    assert.throws(() => decodeConfig(Buffer.alloc(300 * 1024, 32)), /exceeds/);
  });

  test('every value is checked before it can reach a header, a TLS context or a log line', async () => {
    const other = await CertificateAuthority.load(await CertificateAuthority.create('other'), 'test');
    const leaf = await other.issueClient('agent', []);
    const stranger = await other.issueClient('someone', []);
    const good = {
      Version: 'v1',
      Name: 'alpha',
      Token: 'a'.repeat(64),
      KubernetesSvcHost: '10.0.0.1:6443',
      KubeSphereSvcHost: 'ks-apiserver.kubesphere-system.svc:80',
    };
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    assert.equal(
      decodeConfig(
        Buffer.from(
          JSON.stringify({
            ...good,
            CertData: b64(leaf.cert),
            KeyData: b64(leaf.key),
            BearerToken: b64('eyJhbGciOi.x-y_z'),
          }),
        ),
      ).name,
      'alpha',
    );
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ BearerToken: b64('tok\r\nX-Injected: 1') }, /BearerToken must be/],
      [{ BearerToken: b64('a b') }, /BearerToken must be/],
      [{ KubernetesSvcHost: 'host\r\nX: y:443' }, /KubernetesSvcHost must be host:port/],
      [{ KubernetesSvcHost: 'host:0' }, /KubernetesSvcHost "host:0" is not host:port/],
      [{ KubernetesSvcHost: 'host:99999' }, /not host:port with a port 1-65535/],
      [{ KubernetesSvcHost: 'ho$t:443' }, /invalid host name/],
      [{ KubernetesSvcHost: '' }, /KubernetesSvcHost is missing/],
      [{ KubeSphereSvcHost: 'a:b:c' }, /KubeSphereSvcHost/],
      [{ Token: 'x'.repeat(600) }, /Token must be 1-512/],
      [{ Token: 'tab\there' }, /Token must be/],
      [{ Name: '' }, /Name must be/],
      [{ Name: 'n'.repeat(300) }, /Name must be/],
      [{ Version: '\u001b[31m' }, /Version must be/],
      [{ TowerFeatures: ['ok', 'Bad Feature'] }, /TowerFeatures must be/],
      [{ TowerFeatures: Array(20).fill('f') }, /TowerFeatures must be/],
      [{ CAData: b64('not a certificate') }, /CAData holds no PEM certificate/],
      [
        { CAData: b64('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n') },
        /CAData holds a certificate that does not parse/,
      ],
      [{ CertData: b64(leaf.cert) }, /CertData and KeyData come together/],
      [{ CertData: b64('junk'), KeyData: b64(leaf.key) }, /CertData is not a PEM certificate/],
      [{ CertData: b64(leaf.cert), KeyData: b64('junk') }, /KeyData is not a PEM private key/],
      [{ CertData: b64(leaf.cert), KeyData: b64(stranger.key) }, /KeyData does not belong to CertData/],
      [{ Name: 5 }, /field Name must be a string/],
    ];
    for (const [patch, why] of bad) {
      assert.throws(
        () => decodeConfig(Buffer.from(JSON.stringify({ ...good, ...patch }))),
        (err: Error) => why.test(err.message) && /^invalid config: |^malformed config payload: /.test(err.message),
        `${JSON.stringify(patch)} → ${why}`,
      );
    }
  });

  test('the channel type is kubesphere', () => assert.equal(CHANNEL_TYPE, 'kubesphere'));
});

describe('replica views and watch frames', () => {
  test('a view survives its own encoding; duplicates collapse', () => {
    const v = decodeReplicaView(
      encodeReplicaView({ server: 'r1', servers: ['r1', 'r2', 'r2'], draining: true })
        .toString()
        .trim(),
    );
    assert.deepEqual(v, { server: 'r1', servers: ['r1', 'r2'], draining: true });
  });

  test('JSON watch events end at line ends, wherever the chunks split them', () => {
    const f = new WatchFrames('application/json');
    assert.equal(f.feed(Buffer.from('{"type":"ADDED"')), -1);
    assert.equal(f.atBoundary, false);
    assert.equal(f.feed(Buffer.from('}\n{"ty')), 2);
    assert.equal(f.atBoundary, false);
    assert.equal(f.feed(Buffer.from('pe":"X"}\n')), 9);
    assert.equal(f.atBoundary, true);
  });

  test('protobuf watch frames end where their length prefix says, prefixes split across chunks too', () => {
    const frame = (n: number) => Buffer.concat([Buffer.from([0, 0, 0, n]), Buffer.alloc(n, 7)]);
    const all = Buffer.concat([frame(5), frame(3)]);
    const f = new WatchFrames('application/vnd.kubernetes.protobuf;stream=watch');
    assert.equal(f.feed(all.subarray(0, 2)), -1);
    assert.equal(f.feed(all.subarray(2, 6)), -1);
    assert.equal(f.atBoundary, false);
    assert.equal(f.feed(all.subarray(6, 11)), 3);
    assert.equal(f.atBoundary, false);
    assert.equal(f.feed(all.subarray(11)), 5);
    assert.equal(f.atBoundary, true);
  });
});

test("every host key the proxy generates parses (ssh2's generator makes about one in 230 it cannot read back)", () => {
  for (let i = 0; i < 2000; i++) {
    const key = generateHostKey();
    assert.match(hostKeyFingerprint(key), /^SHA256:[A-Za-z0-9+/]{43}$/);
  }
});
