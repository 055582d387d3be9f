// The member policy against the real kube-apiserver v1.20.2 (Go's net/http and its RequestInfo): a
// hostile proxy (tower's agent port driven by hand) writes bytes into a TLS channel of an agent that
// runs the read-only preset with the agent ServiceAccount's bearer token, as `tower install agent`
// sets it up. Each case is one way the agent and the member could read a request differently (a red
// team found each one open); what the member did is asserted, not only what the agent said.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import type { ServerChannel } from 'ssh2';
import { presetPolicy } from '../src/agent/policy.ts';
import { CHANNEL_TYPE_TLS } from '../src/tunnel/protocol.ts';
import type { AgentSession } from '../src/tunnel/server.ts';
import { installAgent, startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { FakeProxy } from './support/fake-proxy.ts';
import { kubectl, writeTokenKubeconfig } from './support/stack.ts';
import { removeDir, run, tempDir, TowerProcess } from './support/tower.ts';

const AGENT_TOKEN = 'e'.repeat(64);

describe('the read-only preset, read by the agent as the real kube-apiserver reads each request', () => {
  let member: MemberCluster;
  let dir: string;
  let proxy: FakeProxy;
  let agent: TowerProcess;
  let session: AgentSession;
  let x509Agent: TowerProcess;
  let x509Session: AgentSession;

  const must = async (args: string[], input?: string) => {
    const r = await kubectl(member.kubeconfig, args, input);
    assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    member = await startMemberCluster();
    dir = tempDir('policy-differentials');
    const { saToken } = await installAgent(member, 'owned', ['--policy-preset', 'read-only']);
    await must(['-n', 'kube-system', 'create', 'secret', 'generic', 'crown-jewels', '--from-literal=k=s3cr3t']);
    await must(['create', 'clusterrolebinding', 'jane-admin', '--clusterrole=cluster-admin', '--user=jane']);
    await must(['create', 'clusterrolebinding', 'jose-admin', '--clusterrole=cluster-admin', '--user=jos\u00e9']);
    await must(['create', 'clusterrole', 'cm-reader', '--verb=list', '--resource=configmaps']);
    await must([
      'create',
      'clusterrolebinding',
      'unauth-cm',
      '--clusterrole=cm-reader',
      '--group=system:unauthenticated',
    ]);
    await must(['-n', 'default', 'create', 'configmap', 'visible', '--from-literal=a=b']);
    // the read-only preset, with three deny rules an owner may well add on top
    const policyFile = join(dir, 'policy.yaml');
    writeFileSync(
      policyFile,
      presetPolicy('read-only').replace(
        'rules:\n',
        'rules:\n' +
          '  - name: never-jose\n    action: deny\n    users: ["jos\u00e9"]\n' +
          '  - name: never-anonymous\n    action: deny\n    groups: ["system:unauthenticated"]\n' +
          '  - name: no-watches\n    action: deny\n    verbs: [watch]\n',
      ),
    );
    // a second agent, as a member whose kubeconfig has a client certificate (TLS-level credentials)
    const pki = join(member.dir, 'pki');
    const sh = (cmd: string) => run('bash', ['-c', cmd], { timeoutMs: 30_000 });
    const r = await sh(
      `cd ${dir} && openssl req -newkey rsa:2048 -nodes -keyout x509.key -out x509.csr ` +
        `-subj /CN=tower-agent-x509 2>/dev/null && openssl x509 -req -in x509.csr -CA ${pki}/ca.crt ` +
        `-CAkey ${pki}/ca.key -CAcreateserial -out x509.crt -days 1 2>/dev/null`,
    );
    assert.equal(r.code, 0, r.stderr);
    await must([
      'create',
      'clusterrolebinding',
      'tower-agent-x509',
      '--clusterrole=tower-agent',
      '--user=tower-agent-x509',
    ]);
    const b64 = (f: string) => readFileSync(join(dir, f)).toString('base64');
    writeFileSync(
      join(dir, 'x509.kubeconfig'),
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [
          {
            name: 'm',
            cluster: {
              server: member.server,
              'certificate-authority-data': Buffer.from(member.caPem).toString('base64'),
            },
          },
        ],
        users: [
          { name: 'u', user: { 'client-certificate-data': b64('x509.crt'), 'client-key-data': b64('x509.key') } },
        ],
        contexts: [{ name: 'c', context: { cluster: 'm', user: 'u' } }],
        'current-context': 'c',
      }),
    );
    proxy = await FakeProxy.start();
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
      writeTokenKubeconfig(join(dir, 'agent-sa.kubeconfig'), member.server, member.caPem, saToken),
      '--policy',
      policyFile,
    ]);
    session = await proxy.session('owned');
    x509Agent = new TowerProcess('agent-x509', [
      'agent',
      '--name',
      'owned-x509',
      '--token',
      AGENT_TOKEN,
      '--proxy-server',
      proxy.url,
      '--proxy-fingerprint',
      proxy.fingerprint,
      '--kubeconfig',
      join(dir, 'x509.kubeconfig'),
      '--policy',
      policyFile,
    ]);
    x509Session = await proxy.session('owned-x509');
  });

  after(async () => {
    await agent?.stop('SIGKILL');
    await x509Agent?.stop('SIGKILL');
    await proxy?.close();
    await member?.stop();
    if (dir) removeDir(dir);
  });

  async function open(s = session): Promise<ServerChannel> {
    const ch = await s.openChannel(s.config.kubernetesSvcHost, CHANNEL_TYPE_TLS);
    ch.on('error', () => undefined);
    return ch;
  }

  /** writes `bytes`, collects all that comes back until the channel closes or `waitMs` passes */
  async function raw(bytes: Buffer | string, waitMs = 3_000, s = session): Promise<string> {
    const ch = await open(s);
    let got = '';
    let closed = false;
    ch.on('data', (d: Buffer) => (got += d.toString('latin1')));
    ch.once('close', () => (closed = true));
    ch.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
    for (const end = Date.now() + waitMs; !closed && Date.now() < end;) await sleep(20);
    ch.destroy();
    return got;
  }

  /**
   * A head the agent reads as one request and Go as two: a header line ending in a bare LF,
   * then CRLF, is a blank line to Go (its head ends there) and a header whose value JS's trim()
   * cleaned to the agent. Go then reads Content-Length bytes of what the agent still takes for
   * header lines as a body, and a second request line that begins in the middle of an agent
   * header line. The agent's own Authorization, appended at the end of the head it judged,
   * lands in that second request.
   */
  function bareLfSmuggle(judged: string, smuggled: string, extra: string[], body: string): string {
    const N = 400;
    const padLen = N - 'X-Pad: '.length;
    assert.ok(body.length <= N);
    return (
      `${judged} HTTP/1.1\r\n` +
      'Host: member\r\n' +
      `Content-Length: ${N}\r\n` +
      'X-A: b\n\r\n' + // Go: end of head 1.  Agent: header X-A = "b"
      `X-Pad: ${'a'.repeat(padLen - 0)}` + // Go: the 400-byte body of request 1
      `${smuggled} HTTP/1.1\r\n` + // Go: request line 2.  Agent: still header X-Pad
      'Host: member\r\n' +
      extra.map((l) => `${l}\r\n`).join('') +
      `Content-Length: ${N}\r\n` + // the agent accepts it: equal to the first
      '\r\n' + // (the agent inserts its Authorization before this)
      body.padEnd(N, ' ')
    );
  }

  test('asked plainly, what the hidden requests below ask is refused', async () => {
    const a = await raw(
      'POST /api/v1/namespaces/kube-system/configmaps HTTP/1.1\r\nHost: member\r\n' +
        'Impersonate-User: mallory\r\nImpersonate-Group: system:masters\r\nContent-Type: application/json\r\n' +
        'Content-Length: 2\r\n\r\n{}',
    );
    assert.match(a, /^HTTP\/1\.1 403/);
    assert.match(a, /no rule allows create configmaps in namespace kube-system as user mallory/);
  });

  test('a bare LF that ends the head early at the member: no hidden create reaches it', async () => {
    const cm = JSON.stringify({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'smuggled', namespace: 'kube-system' },
      data: { by: 'hostile-proxy' },
    });
    await raw(
      bareLfSmuggle(
        'GET /api/v1/namespaces/default/pods',
        'POST /api/v1/namespaces/kube-system/configmaps',
        ['Impersonate-User: mallory', 'Impersonate-Group: system:masters', 'Content-Type: application/json'],
        cm,
      ),
    );
    await sleep(500);
    const got = await kubectl(member.kubeconfig, ['-n', 'kube-system', 'get', 'configmap', 'smuggled', '-o', 'json']);
    assert.notEqual(got.code, 0, 'the ConfigMap the policy refuses was created in the member');
  });

  /**
   * Writes `bytes`; as soon as the first answer is whole, asks an allowed request, whose answer
   * slot the member's answer to the smuggled request then takes. All that came back.
   */
  async function smuggleAndRead(bytes: string, s = session): Promise<string> {
    const ch = await open(s);
    let got = '';
    let asked = false;
    let closed = false;
    ch.once('close', () => (closed = true));
    const third = 'GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: member\r\nImpersonate-User: jane\r\n\r\n';
    ch.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (!asked && /\r\n\r\n[\s\S]*\}\n?$/.test(got)) {
        asked = true;
        ch.write(third);
      }
    });
    ch.write(Buffer.from(bytes, 'latin1'));
    for (const end = Date.now() + 3_000; !closed && Date.now() < end;) await sleep(10);
    ch.destroy();
    return got;
  }

  test('a bare LF that ends the head early: no hidden read answers the next allowed request', async () => {
    let leaked = '';
    for (let attempt = 0; attempt < 10 && !leaked; attempt++) {
      const got = await smuggleAndRead(
        bareLfSmuggle(
          'GET /api/v1/namespaces/default/pods',
          'GET /api/v1/namespaces/kube-system/secrets',
          ['Impersonate-User: mallory', 'Impersonate-Group: system:masters'],
          '',
        ),
      );
      if (got.includes('crown-jewels')) leaked = got;
    }
    assert.equal(leaked, '', 'a Secret reached the proxy through a read-only policy');
  });

  /**
   * The trailer section of a chunked body: the agent checks only that each line begins with
   * `name:`; Go ends the trailers at a bare-LF blank line and reads what follows as a request.
   */
  function trailerSmuggle(judged: string, smuggled: string, extra: string[], body: string): string {
    assert.ok(!body.includes('\r\n'));
    return (
      `${judged} HTTP/1.1\r\nHost: member\r\nImpersonate-User: jane\r\nTransfer-Encoding: chunked\r\n\r\n` +
      '0\r\n' +
      // the agent: one trailer line, up to the CRLF, then the blank line that ends the body.
      // Go: a trailer X-T, a bare-LF blank line (end of the body), then a whole request whose
      // body is `body` and the agent's last CRLF CRLF
      'X-T: a\n\n' +
      `${smuggled} HTTP/1.1\n` +
      'Host: member\n' +
      extra.map((l) => `${l}\n`).join('') +
      `Content-Length: ${Buffer.byteLength(body) + 4}\n` +
      '\n' +
      body +
      '\r\n\r\n'
    );
  }

  test('a request hidden in a trailer, through an agent whose certificate is its identity: none is made', async () => {
    const cm = JSON.stringify({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'smuggled-trailer', namespace: 'kube-system' },
    });
    await raw(
      trailerSmuggle(
        'GET /api/v1/namespaces/default/pods',
        'POST /api/v1/namespaces/kube-system/configmaps',
        ['Impersonate-User: mallory', 'Impersonate-Group: system:masters', 'Content-Type: application/json'],
        cm,
      ),
      3_000,
      x509Session,
    );
    const got = await kubectl(member.kubeconfig, ['-n', 'kube-system', 'get', 'configmap', 'smuggled-trailer']);
    assert.notEqual(got.code, 0, 'the ConfigMap the policy refuses was created in the member');
  });

  test('?watch=no is a watch to the member, and so to the policy', async () => {
    const plain = await raw(
      'GET /api/v1/namespaces/default/configmaps?watch=true HTTP/1.1\r\nHost: m\r\nImpersonate-User: jane\r\n\r\n',
    );
    assert.match(plain, /rule \\"no-watches\\" denies watch configmaps/);
    const a = await raw(
      'GET /api/v1/namespaces/default/configmaps?watch=no&timeoutSeconds=2 HTTP/1.1\r\nHost: m\r\n' +
        'Impersonate-User: jane\r\n\r\n',
    );
    assert.doesNotMatch(a, /"type":"ADDED"/, 'a watch stream came back through a policy that denies watch');
  });

  test('a non-ASCII user name is read as UTF-8, as the member reads it', async () => {
    const a = await raw(
      Buffer.concat([
        Buffer.from('GET /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: m\r\nImpersonate-User: '),
        Buffer.from('jos\u00e9', 'utf8'),
        Buffer.from('\r\n\r\n'),
      ]),
    );
    assert.doesNotMatch(a, /^HTTP\/1\.1 200/, 'josé, whom the policy denies by name, listed ConfigMaps');
  });

  test('system:anonymous is in system:unauthenticated for the policy, as at the member', async () => {
    const a = await raw(
      'GET /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: m\r\nImpersonate-User: system:anonymous\r\n\r\n',
    );
    assert.doesNotMatch(
      a,
      /^HTTP\/1\.1 200/,
      'a request of group system:unauthenticated, which the policy denies, was served',
    );
  });

  test("read-only carries no non-resource GET beyond discovery: not /logs/ (the host's /var/log)", async () => {
    const a = await raw(
      'GET /logs/ HTTP/1.1\r\nHost: m\r\nImpersonate-User: mallory\r\nImpersonate-Group: system:masters\r\n\r\n',
    );
    assert.doesNotMatch(
      a,
      /^HTTP\/1\.1 200[\s\S]*<pre>/,
      'the read-only preset let the proxy list /var/log of the apiserver host',
    );
  });

  test('HTTP/1.0 with Transfer-Encoding, which the member would ignore: the agent refuses it', async () => {
    const mark = agent.output.length;
    await raw(
      'GET /api/v1/namespaces/default/configmaps HTTP/1.0\r\nHost: m\r\nConnection: keep-alive\r\n' +
        'Impersonate-User: jane\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
    );
    // Go answered "5" (the chunk size) as a request line: a 400 the agent sees as an answer to no request
    assert.doesNotMatch(agent.output.slice(mark), /the member sent an answer to no request/);
    await agent.waitFor(/closed a channel that broke HTTP\/1\.1.*Transfer-Encoding in HTTP\/1\.0/, 5_000, mark);
  });
});
