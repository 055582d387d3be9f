// The member's owner holds the line: a policy the agent enforces on every request before anything of
// it reaches the member, whatever the proxy sends. First a hostile proxy (tower's own agent port,
// driven by hand) writes requests outside the policy into channels, and a recording member shows
// that none arrives; then the real kubectl and kube-apiserver, with the presets `tower install agent`
// writes as a ConfigMap, changed live.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import type { ServerChannel } from 'ssh2';
import { parseAllDocuments } from 'yaml';
import { presetPolicy } from '../src/agent/policy.ts';
import { CHANNEL_TYPE, CHANNEL_TYPE_TLS } from '../src/tunnel/protocol.ts';
import type { AgentSession } from '../src/tunnel/server.ts';
import { installAgent, startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { FakeProxy } from './support/fake-proxy.ts';
import { RecordingUpstream } from './support/recording-upstream.ts';
import { kubectl, Stack, writeTokenKubeconfig } from './support/stack.ts';
import { freePort, removeDir, tempDir, tower, TowerProcess } from './support/tower.ts';

/** an answer the agent makes, or the member's, arrives within this */
const ANSWER_WAIT_MS = 10_000;
/** after a refusal, time for bytes that should never come to reach the member all the same */
const SETTLE_MS = 300;
/** an owner's change holds within the agent's 2 s re-read; a bound, not a measure */
const POLICY_CHANGE_WAIT_MS = 20_000;
const AGENT_TOKEN = 'e'.repeat(64);

/** One request a proxy may write into a channel, and how it went. */
interface Asked {
  answer: string;
  /** the Status message of the answer, if it is one */
  message: string;
  status: number | undefined;
  /** probes of it that reached the member */
  reached: number;
}

describe('a hostile proxy: the agent refuses what the member policy does not allow, and the member sees none', () => {
  let dir: string;
  let member: RecordingUpstream;
  let proxy: FakeProxy;
  let agent: TowerProcess;
  let session: AgentSession;
  let policyFile: string;
  let healthPort: number;
  let probes = 0;

  before(async () => {
    dir = tempDir('member-policy');
    member = await RecordingUpstream.start({ apiserver: true, switchUpgrades: true });
    proxy = await FakeProxy.start();
    policyFile = join(dir, 'policy.yaml');
    writeFileSync(policyFile, presetPolicy('read-only'));
    healthPort = await freePort();
    agent = new TowerProcess('agent', [
      'agent',
      '--name',
      'owned',
      '--token',
      AGENT_TOKEN,
      '--proxy-server',
      proxy.url,
      '--proxy-fingerprint',
      proxy.fingerprint,
      '--kubeconfig',
      member.writeKubeconfig(join(dir, 'member.kubeconfig'), 'token'),
      '--kubesphere-service',
      member.ksHostPort,
      '--policy',
      policyFile,
      '--health-port',
      String(healthPort),
      '--health-host',
      '127.0.0.1',
    ]);
    session = await proxy.session('owned');
  });

  after(async () => {
    await agent?.stop('SIGKILL');
    await proxy?.close();
    await member?.close();
    if (dir) removeDir(dir);
  });

  async function open(type = CHANNEL_TYPE_TLS, hostPort = session.config.kubernetesSvcHost): Promise<ServerChannel> {
    const ch = await session.openChannel(hostPort, type);
    ch.on('error', () => undefined);
    return ch;
  }

  /** Writes `head` (with `?probe=`) into `ch` and reads until an answer's body has come, or the channel closed. */
  async function ask(
    ch: ServerChannel,
    method: string,
    path: string,
    lines: string[],
    body = '',
    waitMs = ANSWER_WAIT_MS,
  ): Promise<Asked> {
    const probe = `policy-${++probes}`;
    const framing = body ? [`Content-Length: ${Buffer.byteLength(body)}`] : [];
    const head = [`${method} ${path}${path.includes('?') ? '&' : '?'}probe=${probe} HTTP/1.1`, 'Host: member'];
    let answer = '';
    let closed = ch.destroyed;
    const onData = (d: Buffer) => {
      answer += d.toString('latin1');
    };
    const onClose = () => {
      closed = true;
    };
    ch.on('data', onData);
    ch.once('close', onClose);
    ch.write(Buffer.from([...head, ...lines, ...framing, '', body].join('\r\n'), 'latin1'));
    const deadline = Date.now() + waitMs;
    while (!closed && !/\r\n\r\n[\s\S]*\}\n?$/.test(answer) && Date.now() < deadline) await sleep(20);
    ch.off('data', onData);
    ch.off('close', onClose);
    await sleep(SETTLE_MS);
    const status = /^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1];
    let message = '';
    try {
      message = String(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)).message ?? '');
    } catch {
      // not a Status
    }
    return { answer, message, status: status ? Number(status) : undefined, reached: member.of(probe).length };
  }

  const JANE = ['Impersonate-User: jane', 'Impersonate-Group: viewers'];

  test('an allowed request reaches the member as the user it impersonates (the control)', async () => {
    const r = await ask(await open(), 'GET', '/api/v1/namespaces/default/pods', JANE);
    assert.equal(r.status, 200, r.answer);
    assert.equal(r.reached, 1);
  });

  const refused: [string, string, string, string[], string, RegExp][] = [
    [
      'a namespace created as mallory of system:masters',
      'POST',
      '/api/v1/namespaces',
      ['Impersonate-User: mallory', 'Impersonate-Group: system:masters', 'Content-Type: application/json'],
      '{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"pwned"}}',
      /no rule allows create namespaces as user mallory \(default: deny\)/,
    ],
    [
      'an exec upgrade',
      'POST',
      '/api/v1/namespaces/default/pods/web/exec?command=sh&stdin=true',
      [...JANE, 'Connection: Upgrade', 'Upgrade: SPDY/3.1', 'X-Stream-Protocol-Version: v4.channel.k8s.io'],
      '',
      /rule "never-into-pods" denies create pods\/exec in namespace default as user jane/,
    ],
    [
      'a WebSocket exec (GET)',
      'GET',
      '/api/v1/namespaces/default/pods/web/exec?command=sh',
      [...JANE, 'Connection: Upgrade', 'Upgrade: websocket', 'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: x'],
      '',
      /rule "never-into-pods" denies create pods\/exec/,
    ],
    [
      'Secrets spelled with an escape',
      'GET',
      '/api/v1/namespaces/kube-system/%73ecrets',
      JANE,
      '',
      /rule "never-secrets" denies list secrets in namespace kube-system/,
    ],
    [
      "a request as the agent's own account",
      'GET',
      '/api/v1/namespaces/kube-system/configmaps',
      [],
      '',
      /rule "not-as-the-agent" denies list configmaps in namespace kube-system as the agent's own account/,
    ],
    [
      'two Impersonate-User lines',
      'GET',
      '/api/v1/namespaces',
      ['Impersonate-User: jane', 'Impersonate-User: system:admin'],
      '',
      /cannot judge a request with Impersonate-User twice/,
    ],
    [
      'a query a Go of another version splits otherwise',
      'GET',
      '/api/v1/namespaces/default/pods?watch=false;watch=true',
      JANE,
      '',
      /cannot judge a request with a query with ";"/,
    ],
    [
      'a path with an empty segment',
      'DELETE',
      '/api/v1/namespaces/default//pods/web',
      JANE,
      '',
      /cannot judge a request with a path with empty/,
    ],
  ];
  for (const [what, method, path, lines, body, why] of refused) {
    test(`refused, naming the policy and why: ${what}`, async () => {
      const ch = await open();
      const r = await ask(ch, method, path, lines, body);
      assert.equal(r.reached, 0, 'nothing of it reached the member');
      assert.equal(r.status, 403, r.answer);
      assert.match(r.answer, /"reason":"Forbidden"/);
      assert.match(r.message, /^tower agent of cluster "owned": the member policy \(file [^)]*policy\.yaml\) /);
      assert.match(r.message, why);
    });
  }

  test('an allowed, then a refused request on one channel: the first reaches the member, not the second', async () => {
    const ch = await open();
    const first = await ask(ch, 'GET', '/api/v1/namespaces', JANE);
    assert.equal(first.status, 200);
    assert.equal(first.reached, 1);
    const second = await ask(ch, 'DELETE', '/api/v1/namespaces/kube-system', JANE);
    assert.equal(second.status, 403, second.answer);
    assert.equal(second.reached, 0);
    // the agent ended its side: nothing answers, and nothing may reach the member
    const third = await ask(ch, 'GET', '/api/v1/namespaces', JANE, '', 1_000);
    assert.equal(third.reached, 0, 'the channel carries nothing more after a refusal');
  });

  test("channels the agent could not see into are refused; ks-apiserver gets the policy's 403", async () => {
    // the proxy's own TLS inside a plain channel: the agent would carry bytes it cannot judge
    await assert.rejects(open(CHANNEL_TYPE), 'a raw channel to the kube-apiserver is refused');
    const ks = await ask(await open(CHANNEL_TYPE, session.config.kubesphereSvcHost), 'GET', '/kapis/x', JANE);
    assert.equal(ks.status, 403, ks.answer);
    assert.match(ks.message, /does not carry requests to ks-apiserver \(kubesphere: deny\)/);
    assert.equal(ks.reached, 0);
  });

  test('the agent logs each refusal with its rule and Audit-ID, and counts it by rule', async () => {
    const mark = agent.output.length;
    const r = await ask(await open(), 'GET', '/api/v1/secrets', [...JANE, 'Audit-ID: 3f6c1a0e-policy-log']);
    assert.equal(r.status, 403);
    await agent.waitFor(
      /member policy refused a request.*rule=never-secrets.*auditId=3f6c1a0e-policy-log/,
      5_000,
      mark,
    );
    const metrics = await (await fetch(`http://127.0.0.1:${healthPort}/metrics`)).text();
    const secrets = /^tower_agent_policy_refusals_total\{rule="never-secrets"\} (\d+)$/m.exec(metrics);
    assert.ok(secrets && Number(secrets[1]) >= 2, `counted by rule:\n${metrics.match(/tower_agent_policy.*/g)}`);
    assert.match(metrics, /^tower_agent_policy_requests_total\{decision="allowed"\} [1-9]/m);
    assert.match(metrics, /^tower_agent_policy_ok 1$/m);
  });

  test('the owner changes the policy live: a new rule holds in seconds; a malformed one refuses all', async () => {
    const create = () =>
      open().then((ch) => ask(ch, 'POST', '/api/v1/namespaces/default/configmaps', JANE, '{"kind":"ConfigMap"}'));
    assert.equal((await create()).status, 403);
    writeFileSync(
      policyFile,
      presetPolicy('read-only').replace(
        'rules:\n',
        'rules:\n  - name: configmaps-in-default\n    action: allow\n    namespaces: [default]\n' +
          '    resources: [configmaps]\n',
      ),
    );
    let r = await create();
    for (const deadline = Date.now() + POLICY_CHANGE_WAIT_MS; r.status !== 201 && Date.now() < deadline;) {
      await sleep(250);
      r = await create();
    }
    assert.equal(r.status, 201, `the new rule holds: ${r.answer}`);
    assert.equal(r.reached, 1);

    writeFileSync(policyFile, 'rules: [{name: broken, action: perhaps}]\n');
    let g = await ask(await open(), 'GET', '/api/v1/namespaces', JANE);
    for (const deadline = Date.now() + POLICY_CHANGE_WAIT_MS; g.status !== 403 && Date.now() < deadline;) {
      await sleep(250);
      g = await ask(await open(), 'GET', '/api/v1/namespaces', JANE);
    }
    assert.equal(g.status, 403, 'a malformed policy refuses even what it allowed');
    assert.match(g.message, /cannot be used: it is malformed: rules\[0\] \(broken\)\.action must be allow or deny/);
    assert.equal(g.reached, 0);
    await agent.waitFor(/member policy cannot be used; every request is refused/, 5_000);

    writeFileSync(policyFile, presetPolicy('read-only'));
    let back = await ask(await open(), 'GET', '/api/v1/namespaces', JANE);
    for (const deadline = Date.now() + POLICY_CHANGE_WAIT_MS; back.status !== 200 && Date.now() < deadline;) {
      await sleep(250);
      back = await ask(await open(), 'GET', '/api/v1/namespaces', JANE);
    }
    assert.equal(back.status, 200, 'fixed, it serves again');
  });
});

describe('an agent whose policy cannot be used does not start: a one-line error, exit 1', () => {
  let dir: string;
  before(() => {
    dir = tempDir('member-policy-start');
  });
  after(() => removeDir(dir));

  const base = (extra: string[]) => [
    'agent',
    '--name',
    'owned',
    '--token',
    AGENT_TOKEN,
    '--proxy-server',
    'http://127.0.0.1:9',
    '--proxy-fingerprint',
    `SHA256:${'A'.repeat(43)}`,
    '--kubeconfig',
    join(dir, 'member.kubeconfig'),
    ...extra,
  ];
  before(() => {
    writeTokenKubeconfig(join(dir, 'member.kubeconfig'), 'https://127.0.0.1:9', '', 'member-token');
    writeFileSync(join(dir, 'bad.yaml'), 'rules:\n  - name: x\n    action: allow\n    resource: [pods]\n');
    writeFileSync(join(dir, 'good.yaml'), presetPolicy('read-only'));
  });

  const cases: [string, string[], RegExp][] = [
    ['a missing file', ['--policy', 'nowhere.yaml'], /member policy \(file nowhere\.yaml\): there is no such file/],
    [
      'a malformed file',
      ['--policy', 'BAD'],
      /member policy \(file .*bad\.yaml\): it is malformed: rules\[0\]: unknown field resource/,
    ],
    ['a directory', ['--policy', 'DIR'], /member policy \(file .*\): it cannot be read: EISDIR/],
    [
      'both sources',
      ['--policy', 'GOOD', '--policy-configmap', 'x/y'],
      /give --policy or --policy-configmap, not both/,
    ],
    ['--no-tls-at-agent', ['--policy', 'GOOD', '--no-tls-at-agent'], /a member policy needs --tls-at-agent/],
    [
      'a ConfigMap name that is none',
      ['--policy-configmap', 'a/B_'],
      /--policy-configmap a\/B_: expected NAME or NAMESPACE\/NAME/,
    ],
  ];
  for (const [what, extra, why] of cases) {
    test(what, async () => {
      const args = extra.map((a) =>
        a === 'BAD' ? join(dir, 'bad.yaml') : a === 'GOOD' ? join(dir, 'good.yaml') : a === 'DIR' ? dir : a,
      );
      const r = await tower(base(args));
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, why);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    });
  }
});

describe('the real kubectl and kube-apiserver: the presets, as `tower install agent` writes them, changed live', () => {
  let member: MemberCluster;
  let stack: Stack;
  let jane: string;
  let agent: TowerProcess;

  const must = async (kc: string, args: string[], input?: string) => {
    const r = await kubectl(kc, args, input);
    assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    member = await startMemberCluster();
    const { manifests, saToken } = await installAgent(member, 'owned', ['--policy-preset', 'read-only']);
    const docs = parseAllDocuments(manifests).map((d) => d.toJS());
    const deployment = docs.find((d) => d?.kind === 'Deployment');
    assert.ok(deployment.spec.template.spec.containers[0].args.includes('--policy-configmap=tower-agent-policy'));
    // jane may do anything in the member: only the policy stands in her way
    await must(member.kubeconfig, [
      'create',
      'clusterrolebinding',
      'jane-admin',
      '--clusterrole=cluster-admin',
      '--user=jane',
    ]);
    await must(member.kubeconfig, ['create', 'namespace', 'team-a']);
    // no controller-manager here makes it
    await must(member.kubeconfig, ['-n', 'default', 'create', 'serviceaccount', 'default']);
    await must(member.kubeconfig, ['-n', 'default', 'create', 'secret', 'generic', 'keys', '--from-literal=k=v']);
    // a pod that never runs (no kubelet here): enough for kubectl to try exec, which the agent must refuse
    await must(
      member.kubeconfig,
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'web', namespace: 'default' },
        spec: { automountServiceAccountToken: false, containers: [{ name: 'web', image: 'web' }] },
      }),
    );
    stack = new Stack();
    await stack.startProxy(['--access-log']);
    const agentKc = writeTokenKubeconfig(
      join(stack.dataDir, 'agent-sa.kubeconfig'),
      member.server,
      member.caPem,
      saToken,
    );
    const { token } = await stack.token('owned');
    agent = stack.startAgent('owned', token, agentKc, ['--policy-configmap', 'kubesphere-system/tower-agent-policy']);
    await agent.waitFor(/connected to proxy/);
    jane = await stack.kubeconfig('owned', ['--user', 'jane']);
  });

  after(async () => {
    await stack?.close();
    await member?.stop();
  });

  test('read-only: get, list, watch pass; create, delete, exec and Secrets are refused naming the rule', async () => {
    assert.match(await must(jane, ['get', 'namespaces']), /team-a/);
    const watch = await kubectl(jane, ['get', 'pods', '-A', '--watch', '--request-timeout=2s']);
    assert.match(watch.stdout, /web/, `a watch is carried: ${watch.stderr}`);
    const cases: [string[], RegExp][] = [
      [['create', 'namespace', 'janes'], /no rule allows create namespaces as user jane \(default: deny\)/],
      [['-n', 'default', 'delete', 'pod', 'web'], /no rule allows delete pods in namespace default as user jane/],
      [['-n', 'default', 'get', 'secret', 'keys'], /rule "never-secrets" denies get secrets in namespace default/],
      [
        ['-n', 'default', 'exec', 'web', '--', 'id'],
        /rule "never-into-pods" denies create pods\/exec in namespace default/,
      ],
    ];
    for (const [args, why] of cases) {
      const r = await kubectl(jane, args);
      assert.notEqual(r.code, 0, `kubectl ${args.join(' ')} is refused`);
      assert.match(r.stderr, /Error from server \(Forbidden\)/, r.stderr);
      assert.match(r.stderr, /the member policy \(configmap kubesphere-system\/tower-agent-policy\)/);
      assert.match(r.stderr, why);
    }
    assert.equal((await kubectl(member.kubeconfig, ['get', 'namespace', 'janes'])).code, 1, 'nothing was created');
    // each refusal the agent logged is, by its Audit-ID, a 403 in the proxy's access log
    const refusedIds = [...agent.output.matchAll(/member policy refused a request .*auditId=(\S+)/g)].map((m) => m[1]!);
    assert.ok(refusedIds.length >= cases.length, agent.output);
    for (const id of refusedIds)
      assert.match(stack.proxy!.output, new RegExp(`access .*status=403 .*auditId=${id}`), `the proxy logged ${id}`);
  });

  test('the ConfigMap changed to the namespaced preset: team-a is hers, the rest is not', async () => {
    const namespaced = presetPolicy('namespaced', ['team-a']);
    const configMap = {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'tower-agent-policy', namespace: 'kubesphere-system' },
      data: { 'policy.yaml': namespaced },
    };
    await must(member.kubeconfig, ['apply', '-f', '-'], JSON.stringify(configMap));
    let r = await kubectl(jane, ['-n', 'team-a', 'create', 'configmap', 'hers']);
    for (const deadline = Date.now() + POLICY_CHANGE_WAIT_MS; r.code !== 0 && Date.now() < deadline;) {
      await sleep(500);
      r = await kubectl(jane, ['-n', 'team-a', 'create', 'configmap', 'hers']);
    }
    assert.equal(r.code, 0, `the new policy holds: ${r.stderr}`);
    const elsewhere = await kubectl(jane, ['-n', 'default', 'get', 'pods']);
    assert.notEqual(elsewhere.code, 0);
    assert.match(elsewhere.stderr, /no rule allows list pods in namespace default as user jane/);
    const policyWrite = await kubectl(jane, ['-n', 'kubesphere-system', 'delete', 'configmap', 'tower-agent-policy']);
    assert.notEqual(policyWrite.code, 0, 'no host user may rewrite the policy through the tunnel');
    assert.match(policyWrite.stderr, /never lets the tunnel write the ConfigMaps beside it/);
    assert.equal(
      (await kubectl(member.kubeconfig, ['-n', 'kubesphere-system', 'get', 'configmap', 'tower-agent-policy'])).code,
      0,
    );
  });

  test('the ConfigMap deleted by its owner: every request is refused until it is back', async () => {
    await must(member.kubeconfig, ['-n', 'kubesphere-system', 'delete', 'configmap', 'tower-agent-policy']);
    let r = await kubectl(jane, ['-n', 'team-a', 'get', 'configmaps']);
    for (const deadline = Date.now() + POLICY_CHANGE_WAIT_MS; r.code === 0 && Date.now() < deadline;) {
      await sleep(500);
      r = await kubectl(jane, ['-n', 'team-a', 'get', 'configmaps']);
    }
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /cannot be used: there is no such ConfigMap/);
  });
});
