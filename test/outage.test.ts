import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { kubectl, Stack } from './support/stack.ts';
import { TowerProcess } from './support/tower.ts';
import { TestUpstream } from './support/upstream.ts';

/**
 * After any outage the agent is back within its backoff cap (--max-retry-interval, 30 s by
 * default) of the proxy serving again: the outage here is long enough for the backoff to reach it.
 */
const OUTAGE_MS = 40_000;
const CAP_S = 30;

let upstream: TestUpstream;
let stack: Stack;

before(async () => {
  upstream = await TestUpstream.start();
  stack = new Stack();
  await stack.startProxy();
});

after(async () => {
  await stack?.close();
  await upstream?.close();
});

test(
  `an agent with the default backoff is back within ${CAP_S} s of ` +
    `the proxy serving again after a ${OUTAGE_MS / 1000} s outage`,
  async () => {
    const { token } = await stack.token('outage');
    const kc = upstream.writeKubeconfig(join(stack.dataDir, 'o.kubeconfig'), 'cert');
    // not Stack.startAgent: that one shortens --max-retry-interval for other tests
    const agent = new TowerProcess(
      'agent outage',
      [
        'agent',
        '--name',
        'outage',
        '--token',
        token,
        '--proxy-server',
        stack.proxyUrl,
        '--proxy-fingerprint',
        stack.fingerprint,
        '--kubeconfig',
        kc,
      ],
      {},
    );
    stack.processes.push(agent);
    await agent.waitFor(/connected to proxy/);
    const proxyArgs = ['--request-timeout', '60s'];
    await stack.proxy!.stop();
    const from = agent.output.length;
    await new Promise((r) => setTimeout(r, OUTAGE_MS));
    const delays = [...agent.output.slice(from).matchAll(/connection failed; retrying .* in=(\d+\.\d)s/g)].map((m) =>
      Number(m[1]),
    );
    assert.ok(delays.length >= 4, `the agent kept retrying during the outage:\n${agent.output.slice(from)}`);
    assert.ok(Math.max(...delays) <= CAP_S, `no wait beyond ${CAP_S} s: ${delays.join(', ')}`);
    assert.ok(
      Math.max(...delays) >= CAP_S / 2,
      `the backoff reached its cap's range (jittered between half and all of it): ${delays.join(', ')}`,
    );
    const back = agent.output.length;
    await stack.startProxy(proxyArgs);
    const served = Date.now();
    await agent.waitFor(/connected to proxy/, (CAP_S + 10) * 1000, back);
    const seconds = (Date.now() - served) / 1000;
    assert.ok(seconds <= CAP_S + 5, `back ${seconds.toFixed(1)} s after the proxy served again`);
    const r = await kubectl(await stack.kubeconfig('outage'), ['get', '--raw', '/api']);
    assert.equal(r.code, 0, r.stderr);
  },
);
