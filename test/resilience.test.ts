import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parse } from 'yaml';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { kubectl, Stack } from './support/stack.ts';
import { waitUntil } from './support/tower.ts';

let member: MemberCluster;
let stack: Stack;
let kc: string;

before(async () => {
  member = await startMemberCluster();
  stack = new Stack();
  await stack.startProxy();
});

after(async () => {
  await stack?.close();
  await member?.stop();
});

function status(name: string) {
  try {
    return parse(readFileSync(join(stack.dataDir, 'status', `${name}.yaml`), 'utf8')) as {
      connected: boolean;
      agents: number;
    };
  } catch {
    return undefined;
  }
}

async function version(): Promise<string> {
  const r = await kubectl(kc, ['get', '--raw', '/version']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout).gitVersion;
}

test(
  'two agents with the same name share the load; ' + 'one is killed with SIGKILL and requests keep succeeding',
  async () => {
    const { token } = await stack.token('delta');
    const a1 = stack.startAgent('delta', token, member.kubeconfig);
    const a2 = stack.startAgent('delta', token, member.kubeconfig);
    await Promise.all([a1.waitFor(/connected to proxy/), a2.waitFor(/connected to proxy/)]);
    await stack.proxy!.waitFor(/agent connected cluster=delta .* agents=2/);
    await waitUntil('status to count two agents', () => status('delta')?.agents === 2);
    kc = await stack.kubeconfig('delta');

    for (let i = 0; i < 4; i++) assert.equal(await version(), 'v1.20.2');
    await a1.stop('SIGKILL');
    // the proxy notices the dead link when the WebSocket closes; meanwhile requests must still succeed
    for (let i = 0; i < 10; i++) assert.equal(await version(), 'v1.20.2');
    await stack.proxy!.waitFor(/agent disconnected cluster=delta .* agents=1/);
    await waitUntil(
      'status to count one agent',
      () => status('delta')?.agents === 1 && status('delta')?.connected === true,
    );
    assert.ok(a2.running);
  },
);

test('the proxy restarts on the same data dir; the running agent reconnects and kubectl works again', async () => {
  const agentsBefore = stack.processes.filter((p) => p.name === 'agent delta' && p.running);
  assert.equal(agentsBefore.length, 1);
  const agent = agentsBefore[0]!;
  const mark = agent.output.length;
  await stack.proxy!.stop('SIGTERM');
  const down = await kubectl(kc, ['get', '--raw', '/version']);
  assert.notEqual(down.code, 0, 'the gateway is down while the proxy is');
  await stack.startProxy();
  await agent.waitFor(/connected to proxy/, 30_000, mark);
  assert.equal(await version(), 'v1.20.2');
  // the CA and host key were reused: the old kubeconfig and the pinned fingerprint still work
  assert.match(agent.output.slice(mark), /disconnected from proxy; reconnecting/);
});

test('tower token --rotate disconnects sessions with the old token; the new token connects', async () => {
  const { token: oldToken } = await stack.token('epsilon');
  const old = stack.startAgent('epsilon', oldToken, member.kubeconfig);
  await old.waitFor(/connected to proxy/);
  const { token: newToken, result } = await stack.token('epsilon', ['--rotate']);
  assert.notEqual(newToken, oldToken);
  assert.match(result.stderr, /rotated the token of cluster "epsilon"/);
  await stack.proxy!.waitFor(/cluster token rotated cluster=epsilon sessionsClosed=1/, 5000);
  // on reconnecting with the old token the agent is refused and exits with the reason
  assert.equal(await old.exited, 1);
  assert.match(old.output, /Unauthorized agent/);
  const fresh = stack.startAgent('epsilon', newToken, member.kubeconfig);
  await fresh.waitFor(/connected to proxy/);
  const r = await kubectl(await stack.kubeconfig('epsilon'), ['get', 'namespaces', '-o', 'name']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /namespace\/default/);
});

test('a proxy that stops answering is detected by keepalive and redialed', async () => {
  const { token } = await stack.token('zeta');
  const agent = stack.startAgent('zeta', token, member.kubeconfig, ['--keepalive', '1s']);
  await agent.waitFor(/connected to proxy/);
  const mark = agent.output.length;
  // freeze the proxy: its sockets stay open but nothing answers
  stack.proxy!.child.kill('SIGSTOP');
  try {
    await agent.waitFor(
      /disconnected from proxy; reconnecting why="the proxy did not answer a ping within 10000 ms"/,
      30_000,
      mark,
    );
  } finally {
    stack.proxy!.child.kill('SIGCONT');
  }
  await agent.waitFor(/connected to proxy/, 30_000, mark);
});
