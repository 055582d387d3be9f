import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import ssh2 from 'ssh2';
import { Logger } from '../src/observe/log.ts';
import { dialTunnel, ConfigRejectedError } from '../src/tunnel/client.ts';
import { CHANNEL_TYPE, CLIENT_IDENT, decodeConfig, encodeConfig, SERVER_IDENT, UNAUTHORIZED, type AgentConfig } from '../src/tunnel/protocol.ts';
import { TunnelServer, type AgentSession } from '../src/tunnel/server.ts';
import { generateHostKey, hostKeyFingerprint, type TunnelClient } from '../src/tunnel/ssh.ts';

const quiet = new Logger({ verbosity: -1, format: 'text' });
const hostKey = generateHostKey();
const sockets: Socket[] = [];
after(() => { for (const s of sockets) s.destroy(); });

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

const config: AgentConfig = { version: 'v-test', name: 'alpha', token: 't0k3n', kubernetesSvcHost: '10.0.0.1:443', kubesphereSvcHost: 'ks:80', caData: Buffer.from('ca'), bearerToken: Buffer.from('bearer') };

function serve(b: Socket, verdict: string | undefined = undefined, timeoutMs = 5000): Promise<AgentSession> {
  return new TunnelServer(hostKey).accept(b, { remote: 'test', authorize: async () => verdict, handshakeTimeoutMs: timeoutMs, log: quiet });
}

describe('wire protocol v1 on the patched ssh2', () => {
  test('both sides send the Go tower identification strings, byte for byte, and still agree on keys', async () => {
    const { a, b, fromA, fromB } = await socketPair();
    const [session, client] = await Promise.all([serve(b), dialTunnel(a, { config, handshakeTimeoutMs: 5000, onChannel: (_h, _t, _acc, rej) => rej() })]);
    assert.ok(Buffer.concat(fromA).toString('latin1').startsWith(CLIENT_IDENT + '\r\n'));
    assert.ok(Buffer.concat(fromB).toString('latin1').startsWith(SERVER_IDENT + '\r\n'));
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
    await assert.rejects(dialTunnel(a, { config, handshakeTimeoutMs: 5000, onChannel: () => {} }), (err: Error) => err instanceof ConfigRejectedError && err.message === UNAUTHORIZED);
    await assert.rejects(served, /Unauthorized agent/);
    if (!b.destroyed) await once(b, 'close');
  });

  test('a kubesphere channel carries the raw host:port as extra data; data flows both ways', async () => {
    const { a, b } = await socketPair();
    const seen: string[] = [];
    const [session, client] = await Promise.all([serve(b), dialTunnel(a, {
      config, handshakeTimeoutMs: 5000,
      onChannel: (hostPort, _type, accept, reject) => {
        seen.push(hostPort);
        if (hostPort !== '10.0.0.1:443') { reject(); return; }
        const ch = accept();
        ch.on('data', (d: Buffer) => ch.write(Buffer.from(d.toString().toUpperCase())));
      },
    })]);
    const ch = await session.openChannel('10.0.0.1:443');
    ch.write('ping over the channel');
    const [echo] = await once(ch, 'data');
    assert.equal(echo.toString(), 'PING OVER THE CHANNEL');
    await assert.rejects(session.openChannel('169.254.169.254:80'), /the agent refused a channel to 169\.254\.169\.254:80/);
    assert.deepEqual(seen, ['10.0.0.1:443', '169.254.169.254:80']);
    ch.close();
    client.close();
  });

  test('keepalive pings are answered', async () => {
    const { a, b } = await socketPair();
    const [session, client] = await Promise.all([serve(b), dialTunnel(a, { config, handshakeTimeoutMs: 5000, onChannel: () => {} })]);
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
    const err = await new Promise<Error | undefined>((resolve) => client.forwardOut('127.0.0.1', 1, '127.0.0.1', 22, (e) => resolve(e)));
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
    const c = decodeConfig(Buffer.from(JSON.stringify({ name: 'a', TOKEN: 't', kubernetessvchost: 'k:443', KubeSphereSvcHost: 'ks:80', cadata: Buffer.from('x').toString('base64'), Unknown: 1 })));
    assert.equal(c.name, 'a');
    assert.equal(c.token, 't');
    assert.equal(c.kubernetesSvcHost, 'k:443');
    assert.equal(c.caData?.toString(), 'x');
  });

  test('what we send is what Go\'s encoding/json writes for the Go tower\'s Config', () => {
    const json = JSON.parse(encodeConfig(config).toString());
    assert.deepEqual(Object.keys(json), ['Version', 'Name', 'Token', 'KubernetesSvcHost', 'KubeSphereSvcHost', 'CAData', 'BearerToken']);
    assert.equal(json.CAData, Buffer.from('ca').toString('base64'));
  });

  test('malformed payloads are refused with a reason', () => {
    assert.throws(() => decodeConfig(Buffer.from('{')), /malformed config payload/);
    assert.throws(() => decodeConfig(Buffer.from('[]')), /want a JSON object/);
    assert.throws(() => decodeConfig(Buffer.from('{"Name": 5}')), /field Name must be a string/);
    assert.throws(() => decodeConfig(Buffer.from('{"CAData": "%%%"}')), /field CAData must be base64/);
    assert.throws(() => decodeConfig(Buffer.alloc(300 * 1024, 32)), /exceeds/);
  });

  test('the channel type is kubesphere', () => assert.equal(CHANNEL_TYPE, 'kubesphere'));
});
