import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { presetPolicy } from '../src/agent/policy.ts';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { goPeerBinary, startGoPeer } from './support/go-peer.ts';
import { kubectl, Stack } from './support/stack.ts';
import { freePort, type TowerProcess } from './support/tower.ts';

let member: MemberCluster;
let stack: Stack;
let goPeer: string;
const peers: TowerProcess[] = [];

before(async () => {
  goPeer = await goPeerBinary();
  member = await startMemberCluster();
  stack = new Stack();
  await stack.startProxy();
});

after(async () => {
  await Promise.all(peers.map((p) => p.stop('SIGKILL')));
  await stack?.close();
  await member?.stop();
});

function peer(args: string[]): TowerProcess {
  const p = startGoPeer(goPeer, args);
  peers.push(p);
  return p;
}

describe('a Go tower agent (x/crypto/ssh, gorilla/websocket) with our proxy', () => {
  test('connects with a client certificate, and kubectl reaches the member through our gateway', async () => {
    const { token } = await stack.token('gopher');
    const pki = join(member.dir, 'pki');
    const agent = peer([
      'agent',
      '-proxy-server',
      `ws://127.0.0.1:${stack.agentPort}`,
      '-name',
      'gopher',
      '-token',
      token,
      '-upstream',
      new URL(member.server).host,
      '-ca',
      join(pki, 'ca.crt'),
      '-cert',
      join(pki, 'admin.crt'),
      '-key',
      join(pki, 'admin.key'),
    ]);
    await agent.waitFor(/^connected$/m);
    await stack.proxy!.waitFor(/agent connected cluster=gopher .*version=go-peer .*auth="client certificate"/);
    const r = await kubectl(await stack.kubeconfig('gopher'), ['get', 'namespaces', '-o', 'name']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /namespace\/kube-system/);
  });

  test('with a wrong token it reads our refusal text, as Go agents do, and stops', async () => {
    const agent = peer([
      'agent',
      '-proxy-server',
      `ws://127.0.0.1:${stack.agentPort}`,
      '-name',
      'gopher',
      '-token',
      'wrong',
      '-upstream',
      new URL(member.server).host,
      '-bearer',
      member.token,
    ]);
    assert.equal(await agent.exited, 1);
    assert.match(agent.output, /^Unauthorized agent$/m);
  });
});

describe('our agent with a Go tower proxy', () => {
  let listen: number;
  let forward: number;
  let fingerprint: string;
  const token = 'go-proxy-token';

  before(async () => {
    listen = await freePort();
    forward = await freePort();
    const proxy = peer([
      'proxy',
      '-listen',
      `127.0.0.1:${listen}`,
      '-forward',
      `127.0.0.1:${forward}`,
      '-name',
      'alpha',
      '-token',
      token,
    ]);
    fingerprint = (await proxy.waitFor(/^serving .* fingerprint=(SHA256:\S+)$/m))[1]!;
  });

  test('connects through a 101 without a subprotocol header, and carries kubectl through the Go proxy', async () => {
    const agent = stack.startAgent('alpha', token, member.kubeconfig, [
      '--proxy-server',
      `http://127.0.0.1:${listen}`,
      '--proxy-fingerprint',
      fingerprint,
      '--keepalive',
      '1s',
    ]);
    await agent.waitFor(/connected to proxy/);
    // the Go proxy forwards raw TCP: kubectl's TLS and client certificate go end to end to the member
    const r = await kubectl(member.kubeconfig, [
      '--server',
      `https://127.0.0.1:${forward}`,
      'get',
      'namespaces',
      '-o',
      'name',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /namespace\/default/);
    // keepalive pings (every second) are answered by the Go proxy: still connected after a few
    await new Promise((resolve) => setTimeout(resolve, 3000));
    assert.doesNotMatch(agent.output, /disconnected/);
    await agent.stop();
  });

  test('with a member policy, our agent does not join a Go proxy (it carries what the agent cannot see)', async () => {
    const policy = join(stack.dataDir, 'member-policy.yaml');
    writeFileSync(policy, presetPolicy('read-only'));
    const agent = stack.startAgent('alpha', token, member.kubeconfig, [
      '--proxy-server',
      `http://127.0.0.1:${listen}`,
      '--proxy-fingerprint',
      fingerprint,
      '--policy',
      policy,
    ]);
    await agent.waitFor(/the member policy could not be enforced: not connecting/);
    assert.doesNotMatch(agent.output, /connected to proxy/);
    const r = await kubectl(member.kubeconfig, [
      '--server',
      `https://127.0.0.1:${forward}`,
      '--request-timeout=3s',
      'get',
      'ns',
    ]);
    assert.notEqual(r.code, 0, 'nothing reaches the member through the Go proxy');
    await agent.stop();
  });

  test('a wrong token: the Go proxy\'s "Unauthorized agent" makes our agent exit 1 with the fix', async () => {
    const agent = stack.startAgent('alpha', 'wrong', member.kubeconfig, [
      '--proxy-server',
      `http://127.0.0.1:${listen}`,
      '--proxy-fingerprint',
      fingerprint,
    ]);
    assert.equal(await agent.exited, 1);
    assert.match(agent.output, /the proxy refused agent "alpha": Unauthorized agent/);
  });
});
