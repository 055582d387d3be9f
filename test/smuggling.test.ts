import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { connect } from 'node:tls';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { kubectl, run, Stack, writeTokenKubeconfig } from './support/stack.ts';
import { tower } from './support/tower.ts';

/*
 * jane, a viewer, tries to smuggle a request to the member inside one of hers, framed so that the
 * gateway and the member might disagree on where her request ends: the smuggled one would run with
 * the agent's rights (its token, or the TLS connection of its certificate) and bind jane to
 * cluster-admin. On a real kube-apiserver with RBAC, through agents that hold exactly the rights
 * `tower install agent` grants, whatever the framing: nothing is created on the member, jane is
 * still a viewer, and bob, who shares the pooled channels, only ever gets his own answers.
 */

/** jane's connection is read until it has been quiet this long (answers may come late, or not at all) */
const ANSWER_QUIET_MS = 500;
const ANSWER_MAX_MS = 5_000;
/**
 * bob's requests from the moment jane has written, on a connection he opened before: one after the
 * other for a while (the gateway's pool hands the channel jane's request leaves to the next request,
 * and a smuggled answer still on its way would reach him), then several at once (every pooled channel)
 */
const BOB_IN_TURN_MS = 400;
const BOB_IN_TURN_MAX = 40;
const BOB_AT_ONCE = 6;
const REQUEST_TIMEOUT_MS = 10_000;
/** time for a smuggled request, had it reached the member, to be carried out */
const SETTLE_MS = 300;
/** the x509 user of the certificate agent: bound to the agent ClusterRole that `tower install agent` makes */
const CERT_AGENT_USER = 'tower-agent-x509';

/** The TLS material of a kubeconfig that `tower kubeconfig` wrote. */
interface Client {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

function clientOf(kubeconfig: string): Client {
  const doc = parse(readFileSync(kubeconfig, 'utf8'));
  const user = doc.users[0].user;
  return {
    ca: Buffer.from(doc.clusters[0].cluster['certificate-authority-data'], 'base64'),
    cert: Buffer.from(user['client-certificate-data'], 'base64'),
    key: Buffer.from(user['client-key-data'], 'base64'),
  };
}

let member: MemberCluster;
let stack: Stack;

/** One tower cluster in front of the member (one per kind of agent), and its users' kubeconfigs. */
interface Cluster {
  name: string;
  jane: string;
  bob: string;
}
const clusters: Record<'token' | 'cert', Cluster> = {
  token: { name: 'beta', jane: '', bob: '' },
  cert: { name: 'gamma', jane: '', bob: '' },
};

const must = async (kc: string, args: string[], input?: string) => {
  const r = await kubectl(kc, args, input);
  assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};

/**
 * A client certificate from the member's own CA for `user`, as a kubeconfig: how an agent without a token
 * authenticates.
 */
async function writeCertificateKubeconfig(path: string, user: string): Promise<string> {
  const pki = join(member.dir, 'pki');
  const openssl = async (args: string[]) => {
    const r = await run('openssl', args);
    assert.equal(r.code, 0, `openssl ${args.join(' ')}: ${r.stderr}`);
  };
  await openssl([
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    join(pki, `${user}.key`),
    '-out',
    join(pki, `${user}.csr`),
    '-subj',
    `/CN=${user}`,
  ]);
  await openssl([
    'x509',
    '-req',
    '-in',
    join(pki, `${user}.csr`),
    '-CA',
    join(pki, 'ca.crt'),
    '-CAkey',
    join(pki, 'ca.key'),
    '-CAcreateserial',
    '-out',
    join(pki, `${user}.crt`),
    '-days',
    '1',
  ]);
  const b64 = (f: string) => readFileSync(join(pki, f)).toString('base64');
  writeFileSync(
    path,
    stringify({
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
        { name: 'u', user: { 'client-certificate-data': b64(`${user}.crt`), 'client-key-data': b64(`${user}.key`) } },
      ],
      contexts: [{ name: 'c', context: { cluster: 'm', user: 'u' } }],
      'current-context': 'c',
    }),
    { mode: 0o600 },
  );
  return path;
}

before(async () => {
  member = await startMemberCluster();
  // the agent's rights: exactly what `tower install agent` grants (impersonation and SubjectAccessReviews, no more)
  const manifests = await tower([
    'install',
    'agent',
    '--with-namespace',
    '--name',
    'beta',
    '--token',
    'b'.repeat(64),
    '--proxy-server',
    'http://tower.example:8080',
    '--proxy-fingerprint',
    `SHA256:${'B'.repeat(43)}`,
  ]);
  assert.equal(manifests.code, 0, manifests.stderr);
  const role = parseAllDocuments(manifests.stdout)
    .map((d) => d.toJS())
    .find((d) => d?.kind === 'ClusterRole');
  await must(member.kubeconfig, ['apply', '-f', '-'], manifests.stdout);
  const saToken = (
    await must(member.kubeconfig, ['-n', 'kubesphere-system', 'create', 'token', 'tower-agent', '--duration', '1h'])
  ).trim();
  // the same ClusterRole for an agent that authenticates with a client certificate
  await must(member.kubeconfig, [
    'create',
    'clusterrolebinding',
    CERT_AGENT_USER,
    `--clusterrole=${role.metadata.name}`,
    `--user=${CERT_AGENT_USER}`,
  ]);
  // what the built-in "view" role holds for these resources (kube-controller-manager, which fills it, does not run
  // here)
  await must(member.kubeconfig, [
    'create',
    'clusterrole',
    'viewer',
    '--verb=get,list,watch',
    '--resource=pods,configmaps,namespaces',
  ]);
  await must(member.kubeconfig, [
    'create',
    'clusterrolebinding',
    'viewers-view',
    '--clusterrole=viewer',
    '--group=viewers',
  ]);

  stack = new Stack();
  await stack.startProxy();
  const agentKubeconfigs = {
    token: writeTokenKubeconfig(join(stack.dataDir, 'agent-sa.kubeconfig'), member.server, member.caPem, saToken),
    cert: await writeCertificateKubeconfig(join(stack.dataDir, 'agent-x509.kubeconfig'), CERT_AGENT_USER),
  };
  for (const kind of ['token', 'cert'] as const) {
    const c = clusters[kind];
    const { token } = await stack.token(c.name);
    await stack.startAgent(c.name, token, agentKubeconfigs[kind]).waitFor(/connected to proxy/);
    c.jane = await stack.kubeconfig(c.name, ['--user', 'jane', '--group', 'viewers']);
    c.bob = await stack.kubeconfig(c.name, ['--user', 'bob', '--group', 'devs']);
  }
});

after(async () => {
  await stack?.close();
  await member?.stop();
});

// ---- what jane sends ----

const CRLF = '\r\n';

/**
 * reads of every ClusterRoleBinding that jane smuggles after her writes: what she would learn with the
 * agent's rights, and answers that keep coming for a while, for whoever is next on that channel
 */
const SMUGGLED_READS = 4;

/**
 * The requests jane wants the member to run with the agent's rights: a ClusterRoleBinding to
 * cluster-admin, a namespace, and reads of every ClusterRoleBinding.
 */
function smuggledRequests(victim: string): string {
  const binding = JSON.stringify({
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRoleBinding',
    metadata: { name: victim },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' },
    subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'jane' }],
  });
  const namespace = JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: victim } });
  const post = (path: string, body: string) =>
    [
      `POST ${path} HTTP/1.1`,
      'Host: kubernetes',
      'Impersonate-User: jane',
      'Impersonate-Group: system:masters',
      'Content-Type: application/json',
      `Content-Length: ${Buffer.byteLength(body)}`,
      '',
      body,
    ].join(CRLF);
  const read = [
    `GET /apis/rbac.authorization.k8s.io/v1/clusterrolebindings HTTP/1.1`,
    'Host: kubernetes',
    'Impersonate-User: jane',
    'Impersonate-Group: system:masters',
    '',
    '',
  ].join(CRLF);
  return (
    post('/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', binding) +
    post('/api/v1/namespaces', namespace) +
    read.repeat(SMUGGLED_READS)
  );
}

function chunked(body: string): string {
  return `${Buffer.byteLength(body).toString(16)}${CRLF}${body}${CRLF}0${CRLF}${CRLF}`;
}

/** One request of jane's to the gateway, as raw bytes. */
function outer(method: string, cluster: string, path: string, headers: string[], body = ''): string {
  return (
    [`${method} /clusters/${cluster}${path} HTTP/1.1`, 'Host: 127.0.0.1', 'User-Agent: jane', ...headers, '', ''].join(
      CRLF,
    ) + body
  );
}

const NAMESPACE = '/api/v1/namespaces/default';
/** a DELETE jane may not make, of something that does not exist: harmless whatever happens to her rights */
const NOTHING = '/api/v1/namespaces/default/configmaps/nothing-here';

/** How jane frames one attempt: the bytes she writes in one go, given the victims' names it smuggles. */
interface Attempt {
  slug: string;
  victims: number;
  bytes: (cluster: string, victims: string[]) => string;
}

const withChunkedBody =
  (method: string, path: string, extra: string[] = [], te = 'chunked'): Attempt['bytes'] =>
  (cluster, [v]) =>
    outer(method, cluster, path, [`Transfer-Encoding: ${te}`, ...extra], chunked(smuggledRequests(v!)));
const withLengthBody =
  (method: string, path: string, extra: string[] = []): Attempt['bytes'] =>
  (cluster, [v]) => {
    const body = smuggledRequests(v!);
    return outer(method, cluster, path, [`Content-Length: ${Buffer.byteLength(body)}`, ...extra], body);
  };

const ATTEMPTS: Record<string, Attempt> = {
  'GET with Transfer-Encoding: chunked': { slug: 'te-get', victims: 1, bytes: withChunkedBody('GET', NAMESPACE) },
  'GET with Transfer-Encoding: identity, chunked': {
    slug: 'te-identity',
    victims: 1,
    bytes: withChunkedBody('GET', NAMESPACE, [], 'identity, chunked'),
  },
  'GET with Expect: 100-continue and a chunked body': {
    slug: 'expect-te',
    victims: 1,
    bytes: withChunkedBody('GET', NAMESPACE, ['Expect: 100-continue']),
  },
  'GET with Expect: 100-continue and a Content-Length body': {
    slug: 'expect-cl',
    victims: 1,
    bytes: withLengthBody('GET', NAMESPACE, ['Expect: 100-continue']),
  },
  'GET with Upgrade: x but no Connection: upgrade, and a chunked body': {
    slug: 'upgrade-no-conn',
    victims: 1,
    bytes: withChunkedBody('GET', NAMESPACE, ['Upgrade: x']),
  },
  'an upgrade request (Connection: Upgrade) with a chunked body': {
    slug: 'upgrade-te',
    victims: 1,
    bytes: withChunkedBody('GET', NAMESPACE, ['Connection: Upgrade', 'Upgrade: SPDY/3.1']),
  },
  'HEAD with Transfer-Encoding: chunked': { slug: 'te-head', victims: 1, bytes: withChunkedBody('HEAD', NAMESPACE) },
  'DELETE with Transfer-Encoding: chunked': {
    slug: 'te-delete',
    victims: 1,
    bytes: withChunkedBody('DELETE', NOTHING),
  },
  'OPTIONS with Transfer-Encoding: chunked': {
    slug: 'te-options',
    victims: 1,
    bytes: withChunkedBody('OPTIONS', NAMESPACE),
  },
  'GET with a Content-Length body that holds the requests': {
    slug: 'cl-get',
    victims: 1,
    bytes: withLengthBody('GET', NAMESPACE),
  },
  'GET with both Content-Length and Transfer-Encoding: chunked': {
    slug: 'cl-and-te',
    victims: 1,
    bytes: (cluster, [v]) =>
      outer(
        'GET',
        cluster,
        NAMESPACE,
        ['Content-Length: 4', 'Transfer-Encoding: chunked'],
        chunked(smuggledRequests(v!)),
      ),
  },
  'three requests pipelined in one write, two of them carrying smuggled requests': {
    slug: 'pipelined',
    victims: 2,
    bytes: (cluster, [a, b]) =>
      withChunkedBody('GET', NAMESPACE)(cluster, [a!]) +
      outer('GET', cluster, NAMESPACE, []) +
      withChunkedBody('OPTIONS', NAMESPACE)(cluster, [b!]),
  },
};

// ---- what the users get back ----

/**
 * Writes `bytes` to the gateway as jane, in one write; what came back, once her connection has been quiet for a while.
 */
function janeWrites(cluster: Cluster, bytes: string): Promise<string> {
  const { ca, cert, key } = clientOf(cluster.jane);
  return new Promise((resolve) => {
    let text = '';
    const socket = connect({ host: '127.0.0.1', port: stack.gatewayPort, ca, cert, key }, () =>
      socket.write(Buffer.from(bytes, 'latin1')),
    );
    let quiet: NodeJS.Timeout | undefined;
    const done = () => {
      clearTimeout(quiet);
      clearTimeout(cap);
      socket.destroy();
      resolve(text);
    };
    const cap = setTimeout(done, ANSWER_MAX_MS);
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      clearTimeout(quiet);
      quiet = setTimeout(done, ANSWER_QUIET_MS);
    });
    socket.on('error', () => undefined);
    socket.on('close', done);
  });
}

/**
 * bob's ordinary request (on `connections`, kept alive, or a connection of its own); his answer, described when it is
 * not his own 403
 */
function bobAsks(cluster: Cluster, connections: Agent | false = false): Promise<string | undefined> {
  const { ca, cert, key } = clientOf(cluster.bob);
  return new Promise((resolve) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: stack.gatewayPort,
        path: `/clusters/${cluster.name}${NAMESPACE}`,
        ca,
        cert,
        key,
        agent: connections,
        timeout: REQUEST_TIMEOUT_MS,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => {
          body += d;
        });
        res.on('end', () => resolve(foreignAnswer(res.statusCode ?? 0, body)));
        res.on('error', (err) => resolve(`an answer cut short: ${err.message}`));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)));
    req.on('error', (err) => resolve(`no answer: ${err.message}`));
    req.end();
  });
}

/**
 * undefined for bob's own answer: the member's 403 that names him (he may not read namespaces); else what he got
 * instead
 */
function foreignAnswer(status: number, body: string): string | undefined {
  let doc: { kind?: string; message?: string; metadata?: { name?: string } } = {};
  try {
    doc = JSON.parse(body);
  } catch {
    /* described below */
  }
  if (status === 403 && doc.kind === 'Status' && /User "bob" cannot get resource "namespaces"/.test(doc.message ?? ''))
    return undefined;
  return `${status} ${doc.kind ?? 'non-JSON'} ${(doc.metadata?.name ?? doc.message ?? body).slice(0, 160)}`;
}

// ---- what the member holds ----

async function memberNames(resource: 'clusterrolebindings' | 'namespaces', among: string[]): Promise<string[]> {
  const out = await must(member.kubeconfig, ['get', resource, '-o', 'name']);
  return out
    .split('\n')
    .map((l) => l.trim().replace(/^[^/]*\//, ''))
    .filter((n) => among.includes(n));
}

/** Everything an attempt could have changed, put back: each attempt is judged on its own. */
async function removeVictims(victims: string[]): Promise<void> {
  await kubectl(member.kubeconfig, ['delete', 'clusterrolebinding', ...victims, '--ignore-not-found']);
  await kubectl(member.kubeconfig, ['delete', 'namespace', ...victims, '--ignore-not-found', '--wait=false']);
}

const UNHARMED = {
  bindingsOnTheMember: [],
  namespacesOnTheMember: [],
  janeCanCreateNamespaces: { code: 1, says: 'no' },
  smuggledAnswersJaneGot: [],
  answersBobGotThatAreNotHis: [],
};

for (const [kind, label] of [
  ['token', 'a bearer-token agent (it adds its Authorization)'],
  ['cert', 'a client-certificate agent (its TLS connection is its identity)'],
] as const) {
  describe(`jane smuggles a request through ${label}: nothing reaches the member with the agent's rights`, () => {
    const cluster = clusters[kind];

    test('to begin with, jane is a viewer and bob has no rights: each is told so, by name', async () => {
      const r = await kubectl(cluster.jane, ['auth', 'can-i', 'create', 'namespaces']);
      assert.deepEqual({ code: r.code, says: r.stdout.trim() }, { code: 1, says: 'no' });
      assert.equal(
        (await must(cluster.jane, ['get', 'namespace', 'default', '-o', 'name'])).trim(),
        'namespace/default',
      );
      assert.equal(await bobAsks(cluster), undefined, 'bob gets his own 403');
    });

    for (const [how, attempt] of Object.entries(ATTEMPTS)) {
      test(
        `${how}: no ClusterRoleBinding or namespace appears, ` +
          `jane is still no admin, bob gets only his own answers`,
        async () => {
          const victims = Array.from(
            { length: attempt.victims },
            (_, i) => `smuggled-${cluster.name}-${attempt.slug}${attempt.victims > 1 ? `-${i + 1}` : ''}`,
          );
          const bobsConnections = new Agent({ keepAlive: true });
          const bob: (string | undefined)[] = [];
          let janesAnswers = '';
          try {
            // bob's connection is up before jane writes: his requests follow hers within a few milliseconds
            bob.push(await bobAsks(cluster, bobsConnections));
            const jane = janeWrites(cluster, attempt.bytes(cluster.name, victims));
            const until = Date.now() + BOB_IN_TURN_MS;
            while (Date.now() < until && bob.length < BOB_IN_TURN_MAX)
              bob.push(await bobAsks(cluster, bobsConnections));
            bob.push(
              ...(await Promise.all(Array.from({ length: BOB_AT_ONCE }, () => bobAsks(cluster, bobsConnections)))),
            );
            janesAnswers = await jane;
          } finally {
            bobsConnections.destroy();
          }
          await sleep(SETTLE_MS);
          const canI = await kubectl(cluster.jane, ['auth', 'can-i', 'create', 'namespaces']);
          const outcome = {
            bindingsOnTheMember: await memberNames('clusterrolebindings', victims),
            namespacesOnTheMember: await memberNames('namespaces', victims),
            janeCanCreateNamespaces: { code: canI.code, says: canI.stdout.trim() },
            smuggledAnswersJaneGot: victims.filter((v) => janesAnswers.includes(v)),
            answersBobGotThatAreNotHis: bob.filter((a) => a !== undefined),
          };
          await removeVictims(victims);
          assert.deepEqual(outcome, UNHARMED);
        },
      );
    }
  });
}
