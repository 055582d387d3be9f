import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { dialWebSocket } from '../src/agent/dial.ts';
import { dialTunnel } from '../src/tunnel/client.ts';
import { Stack } from './support/stack.ts';

let stack: Stack;

before(async () => {
  stack = new Stack();
  await stack.startProxy();
  await stack.token('target');
});

after(async () => {
  await stack?.close();
});

async function attempt(token: string): Promise<string> {
  try {
    const { stream } = await dialWebSocket(stack.proxyUrl.replace('http', 'ws'), { timeoutMs: 5000 });
    const session = await dialTunnel(stream, {
      config: { version: 't', name: 'target', token, kubernetesSvcHost: '127.0.0.1:1', kubesphereSvcHost: '127.0.0.1:2' },
      handshakeTimeoutMs: 5000,
      onChannel: (_h, _t, _a, reject) => reject(),
    });
    session.close();
    return 'admitted';
  } catch (err) {
    return (err as Error).message;
  }
}

test('an address that keeps failing to log in is refused for a while, with a clear answer', async () => {
  const answers: string[] = [];
  for (let i = 0; i < 25; i++) answers.push(await attempt('0'.repeat(64)));
  assert.equal(answers[0], 'Unauthorized agent');
  assert.match(answers.at(-1)!, /answered 429 Too Many Requests: too many failed agent logins from this address; retry later/);
  assert.ok(answers.filter((a) => a === 'Unauthorized agent').length <= 20);
  await stack.proxy!.waitFor(/refused an agent connection .*too many failed agent logins/);
  assert.ok(stack.proxy!.running);
});
