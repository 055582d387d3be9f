import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { after, before, describe, test } from 'node:test';
import { parse } from 'yaml';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { hostileAgent, jsonAnswer, type HostileAgent } from './support/hostile-agent.ts';
import { pattern } from './support/pattern.ts';
import { kubectl, Stack } from './support/stack.ts';

let member: MemberCluster;
let stack: Stack;
/** a kubeconfig of the healthy cluster, served by a real agent and kube-apiserver */
let healthyKc: string;
let hostileToken: string;
let hostileKc: string;
const agents: HostileAgent[] = [];

const b64 = (s: string) => Buffer.from(s).toString('base64');

/**
 * The healthy cluster is still served through the same proxy, and the proxy still runs: the point of every test here.
 */
async function othersUnharmed() {
  assert.ok(stack.proxy!.running, 'the proxy process exited');
  const r = await kubectl(healthyKc, ['get', 'namespaces', '-o', 'name']);
  assert.equal(r.code, 0, `the proxy stopped serving the healthy cluster: ${r.stderr}`);
  assert.match(r.stdout, /namespace\/kube-system/);
}

function validConfig(extra: Record<string, unknown> = {}) {
  return {
    Version: 'hostile',
    Name: 'hostile',
    Token: hostileToken,
    KubernetesSvcHost: '10.0.0.1:443',
    KubeSphereSvcHost: 'ks:80',
    TowerFeatures: ['tls-at-agent'],
    ...extra,
  };
}

before(async () => {
  member = await startMemberCluster();
  stack = new Stack();
  await stack.startProxy(['--request-timeout', '2s']);
  const { token } = await stack.token('healthy');
  const agent = stack.startAgent('healthy', token, member.kubeconfig);
  await agent.waitFor(/connected to proxy/);
  healthyKc = await stack.kubeconfig('healthy');
  hostileToken = (await stack.token('hostile')).token;
  hostileKc = await stack.kubeconfig('hostile');
});

after(async () => {
  for (const a of agents) a.close();
  await stack?.close();
  await member?.stop();
});

describe(
  "a hostile agent's config values (bad, huge, of the wrong type, missing): " +
    'that agent is refused with the reason, nothing else changes',
  () => {
    const cases: [string, Record<string, unknown>, RegExp][] = [
      [
        'a CR/LF in the bearer token (header injection)',
        { BearerToken: b64('token\r\nImpersonate-User: admin') },
        /invalid config: BearerToken must be/,
      ],
      [
        'a CR/LF in KubernetesSvcHost (the Host header)',
        { KubernetesSvcHost: 'evil\r\nX: y:443' },
        /invalid config: KubernetesSvcHost must be host:port in printable ASCII/,
      ],
      [
        'a port out of range',
        { KubernetesSvcHost: '10.0.0.1:70000' },
        /invalid config: KubernetesSvcHost "10\.0\.0\.1:70000" is not host:port/,
      ],
      ['a CA that is not PEM', { CAData: b64('garbage') }, /invalid config: CAData holds no PEM certificate/],
      [
        'a key without its certificate',
        { KeyData: b64('-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n') },
        /invalid config: CertData and KeyData come together/,
      ],
      ['a token of the wrong type', { Token: 12345 }, /malformed config payload: field Token must be a string/],
      [
        'a feature list of the wrong type',
        { TowerFeatures: 'tls-at-agent' },
        /malformed config payload: field TowerFeatures must be a list of strings/,
      ],
      ['no token at all', { Token: null }, /invalid config: Token must be 1-512 printable ASCII characters/],
      ['no kube-apiserver at all', { KubernetesSvcHost: undefined }, /invalid config: KubernetesSvcHost is missing/],
    ];
    for (const [what, patch, reason] of cases) {
      test(what, async () => {
        const from = stack.proxy!.output.length;
        const a = await hostileAgent(stack.proxyUrl, [validConfig(patch)]);
        agents.push(a);
        assert.equal(a.reply.failed, true);
        assert.match(a.reply.text, reason);
        await stack.proxy!.waitFor(/agent handshake failed/, 5000, from);
        const lines = stack
          .proxy!.output.slice(from)
          .split('\n')
          .filter((l) => /hostile|handshake/.test(l));
        assert.equal(lines.length, 1, `one log line for the refusal:\n${lines.join('\n')}`);
        assert.doesNotMatch(stack.proxy!.output.slice(from), /agent connected cluster=hostile/);
        await othersUnharmed();
      });
    }

    test('a 30 000-character name with terminal escapes is logged escaped and cut short', async () => {
      const from = stack.proxy!.output.length;
      const name = '\x1b[31mred\x1b]0;title\x07' + 'n'.repeat(30_000);
      const a = await hostileAgent(stack.proxyUrl, [validConfig({ Name: name })]);
      agents.push(a);
      assert.equal(a.reply.failed, true);
      await stack.proxy!.waitFor(/agent handshake failed/, 5000, from);
      const logged = stack.proxy!.output.slice(from);
      assert.doesNotMatch(logged, /\x1b|\x07/, 'no raw escape reaches the log');
      assert.ok(logged.length < 4000, `the log holds ${logged.length} characters for one refusal`);
      await othersUnharmed();
    });

    test('config requests pipelined behind the first are not evaluated', async () => {
      const from = stack.proxy!.output.length;
      const a = await hostileAgent(stack.proxyUrl, [
        validConfig({ Token: 'f'.repeat(64) }),
        validConfig(),
        validConfig(),
      ]);
      agents.push(a);
      assert.equal(a.reply.text, 'Unauthorized agent');
      for (const m of a.more) {
        assert.equal(m.failed, true);
        assert.match(m.text, /one config request per connection|connection closed/);
      }
      await new Promise((r) => setTimeout(r, 500));
      assert.doesNotMatch(
        stack.proxy!.output.slice(from),
        /agent connected cluster=hostile/,
        'the valid config behind the refused one was admitted',
      );
      await othersUnharmed();
    });
  },
);

describe("broken answers from a hostile agent's upstream fail that request alone (502/504)", () => {
  let hostile: HostileAgent;

  before(async () => {
    hostile = await hostileAgent(stack.proxyUrl, [validConfig()], (path) => {
      switch (path) {
        case '/status-099':
          return { answer: 'HTTP/1.1 099 Weird\r\nContent-Length: 0\r\n\r\n' };
        case '/status-600':
          return { answer: 'HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n' };
        case '/silent':
          return {};
        case '/huge-headers':
          return { answer: `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(100_000)}\r\nContent-Length: 0\r\n\r\n` };
        case '/no-colon':
          return { answer: 'HTTP/1.1 200 OK\r\nthis line has no colon\r\nContent-Length: 2\r\n\r\n{}' };
        case '/bad-reason':
          return { answer: 'HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\n{}' };
        case '/cut':
          return {
            answer: 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"kind":',
            close: true,
          };
        case '/garbage':
          return { answer: Buffer.from([0, 1, 2, 255, 13, 10, 13, 10]) };
        default:
          return { answer: jsonAnswer(200, { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [] }) };
      }
    });
    agents.push(hostile);
    assert.equal(hostile.reply.failed, false, hostile.reply.text);
    await stack.proxy!.waitFor(/agent connected cluster=hostile/);
  });

  const cases: [string, RegExp][] = [
    [
      '/status-099',
      pattern(
        /Error from server \(BadGateway\): tower gateway: the kube-apiserver of cluster /,
        /"hostile" answered with|Error from server \(BadGateway\): tower gateway: cannot reach/,
      ),
    ],
    [
      '/status-600',
      pattern(
        /Error from server \(BadGateway\): tower gateway: /,
        /the kube-apiserver of cluster "hostile" answered with an invalid status code 600/,
      ),
    ],
    [
      '/silent',
      /Error from server \(Timeout\): tower gateway: the kube-apiserver of cluster "hostile" did not answer within 2s/,
    ],
    [
      '/huge-headers',
      pattern(
        /Error from server \(BadGateway\): tower gateway: cannot reach the /,
        /kube-apiserver of cluster "hostile" through its agent: .*[Hh]eader/,
      ),
    ],
    ['/no-colon', /Error from server \(BadGateway\)/],
    ['/bad-reason', /Error from server \(BadGateway\)/],
    ['/garbage', /Error from server \(BadGateway\)/],
  ];
  for (const [path, expected] of cases) {
    test(`${path}: that request fails with a Status, the session and the other cluster go on`, async () => {
      const r = await kubectl(hostileKc, ['get', '--raw', path]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, expected);
      // the same hostile session still serves a sound request
      const ok = await kubectl(hostileKc, ['get', '--raw', '/api']);
      assert.equal(ok.code, 0, `the hostile cluster's session was lost: ${ok.stderr}`);
      await othersUnharmed();
    });
  }

  test('/cut: an answer cut off mid-body reaches the client cut off, never as complete', async () => {
    const r = await kubectl(hostileKc, ['get', '--raw', '/cut']);
    // kubectl prints what arrived, then fails: the cut is an error for the client, not an end
    assert.notEqual(r.code, 0, 'a truncated body must not look like a whole answer');
    assert.match(r.stderr, /EOF|error|closed|reset/i);
    const ok = await kubectl(hostileKc, ['get', '--raw', '/api']);
    assert.equal(ok.code, 0, ok.stderr);
    await othersUnharmed();
  });

  test('an upgrade (exec) answered with an invalid status line gets a 502, the session goes on', async () => {
    const doc = parse(readFileSync(hostileKc, 'utf8'));
    const user = doc.users[0].user;
    const status = await new Promise<number>((resolve, reject) => {
      const req = request({
        host: '127.0.0.1',
        port: stack.gatewayPort,
        path: '/clusters/hostile/status-099',
        ca: Buffer.from(doc.clusters[0].cluster['certificate-authority-data'], 'base64'),
        cert: Buffer.from(user['client-certificate-data'], 'base64'),
        key: Buffer.from(user['client-key-data'], 'base64'),
        headers: {
          connection: 'Upgrade',
          upgrade: 'websocket',
          'sec-websocket-version': '13',
          'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
        },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on('upgrade', () => reject(new Error('the broken upgrade was relayed')));
      req.on('error', reject);
      req.end();
    });
    assert.equal(status, 502);
    const ok = await kubectl(hostileKc, ['get', '--raw', '/api']);
    assert.equal(ok.code, 0, ok.stderr);
    await othersUnharmed();
  });

  test('the gateway acted as the client certificate: no credential, and the impersonation headers', () => {
    const head = hostile.heads.find((h) => /^GET \/api[ ?]/.test(h))!;
    assert.ok(head, 'a request reached the hostile upstream');
    assert.doesNotMatch(head, /^authorization:/im, 'no Authorization: this agent announced no credential');
    assert.match(head, /^impersonate-user: tower-admin$/im);
    assert.match(head, /^impersonate-group: system:masters$/im);
  });
});

test('after every hostile peer, the proxy process is still the one that started', async () => {
  assert.ok(stack.proxy!.running);
  assert.doesNotMatch(stack.proxy!.output, /unexpected error|Uncaught|unhandled/i);
  await othersUnharmed();
});
