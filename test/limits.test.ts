import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { request } from 'node:https';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parse } from 'yaml';
import { dialWebSocket } from '../src/agent/dial.ts';
import { dialTunnel } from '../src/tunnel/client.ts';
import { pattern } from './support/pattern.ts';
import { kubectl, Stack } from './support/stack.ts';
import { TestUpstream } from './support/upstream.ts';

let stack: Stack;
let upstream: TestUpstream;
let token: string;
const sockets: Socket[] = [];

before(async () => {
  upstream = await TestUpstream.start();
  stack = new Stack();
  await stack.startProxy();
  token = (await stack.token('target')).token;
});

after(async () => {
  for (const s of sockets) s.destroy();
  await stack?.close();
  await upstream?.close();
});

/** One login attempt with `attemptToken`, as an agent would make it; the proxy's verdict. */
async function attempt(attemptToken: string): Promise<string> {
  try {
    const { stream } = await dialWebSocket(stack.proxyUrl.replace('http', 'ws'), { timeoutMs: 20_000 });
    const session = await dialTunnel(stream, {
      config: {
        version: 't',
        name: 'target',
        token: attemptToken,
        kubernetesSvcHost: '127.0.0.1:1',
        kubesphereSvcHost: '127.0.0.1:2',
      },
      handshakeTimeoutMs: 20_000,
      onChannel: (_h, _t, _a, reject) => reject(),
    });
    session.close();
    return 'admitted';
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * Opens `n` TCP connections to `port` from each of `localAddresses` that send nothing, a batch at a
 * time: a burst beyond the listen backlog would leave connections the proxy never accepted (and so
 * cannot close) open at the client.
 */
async function idleSockets(port: number, n: number, ...localAddresses: string[]): Promise<Socket[]> {
  const out: Socket[] = [];
  for (const localAddress of localAddresses) {
    for (let i = 0; i < n; i += IDLE_BATCH) {
      const batch = Array.from({ length: Math.min(IDLE_BATCH, n - i) }, () => {
        const s = connect({ port, host: '127.0.0.1', localAddress });
        s.on('error', () => {});
        sockets.push(s);
        return s;
      });
      await Promise.all(batch.map((s) => once(s, 'connect').catch(() => undefined)));
      out.push(...batch);
    }
  }
  return out;
}
const IDLE_BATCH = 200;

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

/** sockets the process holds open */
function socketFds(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) n++;
    } catch {
      /* closed meanwhile */
    }
  }
  return n;
}

const open = (list: Socket[]) => list.filter((s) => !s.destroyed && s.readyState === 'open').length;

describe('failed logins slow strangers down, and never keep a correct token out', () => {
  test('100 failed logins from one address, then the correct agent is admitted within 10 s', async () => {
    const answers: string[] = [];
    // two waves of 50 at once (the per-address cap on handshakes in progress is 128)
    for (let wave = 0; wave < 2; wave++) {
      answers.push(...(await Promise.all(Array.from({ length: 50 }, () => attempt('0'.repeat(64))))));
    }
    assert.equal(answers.length, 100);
    assert.deepEqual(
      [...new Set(answers)],
      ['Unauthorized agent'],
      "each wrong token gets the Go tower's answer, none a lockout",
    );
    // the real agent, from the same address, with the correct token
    const agent = stack.startAgent(
      'target',
      token,
      upstream.writeKubeconfig(join(stack.dataDir, 'target.kubeconfig'), 'token'),
    );
    await agent.waitFor(/connected to proxy/, 10_000);
    await agent.stop();
    // the delay was there for the stranger's next attempt: the limiter is not a no-op
    const slowStarted = Date.now();
    assert.equal(await attempt('1'.repeat(64)), 'Unauthorized agent');
    assert.ok(Date.now() - slowStarted >= 1000, 'a further wrong token is answered after a delay');
    assert.ok(stack.proxy!.running);
  });

  test('handshakes in progress are capped per address: a crowd at one address does not block another', async () => {
    const upgrade =
      'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
      'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
      'Sec-WebSocket-Protocol: kubesphere-v1\r\n\r\n';
    const answer = async (localAddress: string) => {
      const s = connect({ port: stack.agentPort, host: '127.0.0.1', localAddress });
      s.on('error', () => {});
      sockets.push(s);
      s.write(upgrade);
      const [d] = (await once(s, 'data')) as [Buffer];
      return d.toString('latin1').split('\r\n')[0]!;
    };
    // WebSocket open, SSH never started: each holds a pending slot until the handshake deadline
    const crowd = await Promise.all(Array.from({ length: 128 }, () => answer('127.0.0.2')));
    assert.deepEqual([...new Set(crowd)], ['HTTP/1.1 101 Switching Protocols']);
    assert.equal(await answer('127.0.0.2'), 'HTTP/1.1 429 Too Many Requests');
    assert.equal(await answer('127.0.0.3'), 'HTTP/1.1 101 Switching Protocols');
    await stack.proxy!.waitFor(/too many agent handshakes in progress from this address/);
    // a crowd redialing is refused over and over: one line, then one count per window, not a line each
    const from = stack.proxy!.output.length;
    const again = await Promise.all(Array.from({ length: 20 }, () => answer('127.0.0.2')));
    assert.deepEqual([...new Set(again)], ['HTTP/1.1 429 Too Many Requests']);
    const summary = await stack.proxy!.waitFor(
      pattern(
        /refused agent connections why="too many agent handshakes in /,
        /progress from this address; retry later" refused=(\d+) inLast=10s/,
      ),
      15_000,
      from,
    );
    assert.equal(Number(summary[1]), 20);
    const lines = stack
      .proxy!.output.slice(from)
      .split('\n')
      .filter((l) => l.includes('refused an agent connection'));
    assert.deepEqual(lines, [], 'the repeated refusals were counted, not logged one by one');
  });
});

describe('idle sockets are closed by the deadlines, and the memory they took comes back', () => {
  test('3 000 idle sockets on the gateway are closed within the TLS handshake deadline (10 s)', async () => {
    const pid = stack.proxy!.pid;
    const baseline = rssKiB(pid);
    const baselineFds = socketFds(pid);
    // from three addresses: 1 000 each is the per-address cap
    const list = await idleSockets(stack.gatewayPort, 1000, '127.0.0.4', '127.0.0.5', '127.0.0.6');
    const opened = Date.now();
    assert.ok(open(list) > 2900, `only ${open(list)} of 3000 connected`);
    let peak = rssKiB(pid);
    let peakFds = 0;
    // what the proxy holds (sockets a full accept queue never handed it cannot be its to close)
    while (Date.now() - opened < 20_000) {
      await new Promise((r) => setTimeout(r, 250));
      peak = Math.max(peak, rssKiB(pid));
      const fds = socketFds(pid);
      peakFds = Math.max(peakFds, fds);
      if (fds <= baselineFds) break;
    }
    const closedAfter = Date.now() - opened;
    assert.ok(peakFds > baselineFds + 2000, `the proxy held only ${peakFds - baselineFds} of the sockets at once`);
    assert.ok(
      socketFds(pid) <= baselineFds,
      `${socketFds(pid) - baselineFds} idle sockets still held after ${closedAfter} ms`,
    );
    assert.ok(closedAfter < 12_000, `closed after ${closedAfter} ms`);
    await new Promise((r) => setTimeout(r, 2000));
    const afterwards = rssKiB(pid);
    console.log(
      `gateway socket flood: RSS ${Math.round(baseline / 1024)} MiB before, ${Math.round(peak / 1024)} ` +
        `MiB peak, ${Math.round(afterwards / 1024)} MiB after; closed in ${closedAfter} ms`,
    );
    assert.ok(afterwards - baseline < 20 * 1024, `RSS grew by ${afterwards - baseline} KiB and stayed`);
    const kc = await stack.kubeconfig('target');
    const r = await kubectl(kc, ['get', '--raw', '/api']);
    assert.match(r.stderr, /has no agent connected/, 'the gateway still answers');
  });

  test('3 000 idle sockets on the agent port are closed within the handshake deadline', async () => {
    const pid = stack.proxy!.pid;
    const baselineFds = socketFds(pid);
    const list = await idleSockets(stack.agentPort, 1000, '127.0.0.7', '127.0.0.8', '127.0.0.9');
    const opened = Date.now();
    while (socketFds(pid) > baselineFds && Date.now() - opened < 20_000) await new Promise((r) => setTimeout(r, 250));
    assert.ok(socketFds(pid) <= baselineFds, `${socketFds(pid) - baselineFds} idle sockets still held`);
    assert.ok(Date.now() - opened < 12_000);
    assert.ok(open(list) < 100, `${open(list)} still open at the client`);
    assert.equal(await attempt(token), 'admitted', 'agents still get in');
  });
});

describe('connection caps', () => {
  let small: Stack;
  before(async () => {
    small = new Stack();
    await small.startProxy(['--gateway-max-connections', '80', '--gateway-max-connections-per-address', '50']);
  });
  after(async () => {
    await small?.close();
  });

  test('a client address gets at most --gateway-max-connections-per-address; others still connect', async () => {
    const first = await idleSockets(small.gatewayPort, 60, '127.0.0.10');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(open(first), 50);
    const second = await idleSockets(small.gatewayPort, 40, '127.0.0.11');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(open(second), 30, 'the total cap (80) holds across addresses');
    await small.proxy!.waitFor(/refused a connection on the gateway: too many connections/);
    for (const s of [...first, ...second]) s.destroy();
    await new Promise((r) => setTimeout(r, 300));
    const later = await idleSockets(small.gatewayPort, 5, '127.0.0.10');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(open(later), 5, 'closed connections free their places');
  });
});

test('an agent refuses channels beyond --max-channels: that request fails, the next one works', async () => {
  const { token: t } = await stack.token('capped');
  const agent = stack.startAgent(
    'capped',
    t,
    upstream.writeKubeconfig(join(stack.dataDir, 'capped.kubeconfig'), 'token'),
    ['--max-channels', '1'],
  );
  await agent.waitFor(/connected to proxy/);
  const kc = parse(readFileSync(await stack.kubeconfig('capped'), 'utf8'));
  const get = (path: string) =>
    new Promise<number>((resolve, reject) => {
      const user = kc.users[0].user;
      const req = request(
        {
          host: '127.0.0.1',
          port: stack.gatewayPort,
          path: `/clusters/capped${path}`,
          agent: false,
          ca: Buffer.from(kc.clusters[0].cluster['certificate-authority-data'], 'base64'),
          cert: Buffer.from(user['client-certificate-data'], 'base64'),
          key: Buffer.from(user['client-key-data'], 'base64'),
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode!));
        },
      );
      req.on('error', reject);
      req.end();
    });
  const slow = get('/slow?ms=1500');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await get('/api'), 502, 'a second channel at once is refused by the agent');
  assert.equal(await slow, 200);
  await agent.waitFor(/refused a channel: the proxy holds as many open as --max-channels allows/);
  assert.equal(await get('/api'), 200, 'the channel is free again');
});
