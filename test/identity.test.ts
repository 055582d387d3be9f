import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import type { IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parse, parseAllDocuments } from 'yaml';
import { CertificateAuthority } from '../src/pki/ca.ts';
import { kubernetesVerb } from '../src/proxy/gateway/framing.ts';
import { installAgent, startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { pattern } from './support/pattern.ts';
import { kubectl, Stack, writeTokenKubeconfig } from './support/stack.ts';
import { TestUpstream } from './support/upstream.ts';

let member: MemberCluster;
let stack: Stack;
let upstream: TestUpstream;
let admin: string;
let jane: string;
let echoJane: string;

const must = async (kc: string, args: string[], input?: string) => {
  const r = await kubectl(kc, args, input);
  assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};

before(async () => {
  member = await startMemberCluster();
  // the agent's ServiceAccount with exactly the RBAC that `tower install agent` grants: impersonation, no more
  const { manifests, saToken } = await installAgent(member, 'alpha');
  const role = parseAllDocuments(manifests)
    .map((d) => d.toJS())
    .find((d) => d?.kind === 'ClusterRole');
  assert.deepEqual(
    role.rules
      .map((r: { verbs: string[] }) => r.verbs)
      .flat()
      .sort(),
    ['create', 'impersonate', 'impersonate'],
    'no rights beyond impersonation and SubjectAccessReviews',
  );
  stack = new Stack();
  await stack.startProxy(['--access-log']);
  const agentKc = writeTokenKubeconfig(
    join(stack.dataDir, 'agent-sa.kubeconfig'),
    member.server,
    member.caPem,
    saToken,
  );
  const { token } = await stack.token('alpha');
  await stack.startAgent('alpha', token, agentKc).waitFor(/connected to proxy/);
  admin = await stack.kubeconfig('alpha');
  jane = await stack.kubeconfig('alpha', ['--user', 'jane', '--group', 'viewers']);
  // what the built-in "view" role holds for these resources (its rules are filled in by kube-controller-manager, which
  // does not run here)
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

  upstream = await TestUpstream.start();
  const echo = await stack.token('echo');
  await stack
    .startAgent('echo', echo.token, upstream.writeKubeconfig(join(stack.dataDir, 'echo.kubeconfig'), 'token'))
    .waitFor(/connected to proxy/);
  echoJane = await stack.kubeconfig('echo', ['--user', 'jane', '--group', 'viewers']);
});

after(async () => {
  await stack?.close();
  await upstream?.close();
  await member?.stop();
});

describe('the gateway acts as the client certificate (CN → user, O → groups) in a real kube-apiserver', () => {
  test(
    'jane (group viewers, bound to a viewer role) lists pods, ' + 'and the member refuses her a namespace, naming her',
    async () => {
      const list = await kubectl(jane, ['get', 'pods', '-A']);
      assert.equal(list.code, 0, list.stderr);
      const create = await kubectl(jane, ['create', 'namespace', 'janes']);
      assert.notEqual(create.code, 0);
      assert.match(create.stderr, /User "jane" cannot create resource "namespaces"/);
      assert.notEqual((await kubectl(member.kubeconfig, ['get', 'namespace', 'janes'])).code, 0, 'nothing was created');
    },
  );

  test(
    'the default kubeconfig (tower-admin, system:masters) ' + 'is admin through an agent that may only impersonate',
    async () => {
      const r = await kubectl(admin, ['create', 'namespace', 'admins']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(
        (await must(member.kubeconfig, ['get', 'namespace', 'admins', '-o', 'name'])).trim(),
        'namespace/admins',
      );
    },
  );

  test('kubectl --as: refused unless the member says jane may impersonate, then honoured as that user', async () => {
    const refused = await kubectl(jane, ['--as=mallory', 'get', 'pods']);
    assert.notEqual(refused.code, 0);
    assert.match(
      refused.stderr,
      pattern(
        /Error from server \(Forbidden\): tower gateway: /,
        /user "jane" may not impersonate user "mallory" in cluster "alpha"/,
      ),
    );
    await must(member.kubeconfig, [
      'create',
      'clusterrole',
      'impersonate-trudy',
      '--verb=impersonate',
      '--resource=users',
      '--resource-name=trudy',
    ]);
    await must(member.kubeconfig, [
      'create',
      'clusterrolebinding',
      'jane-as-trudy',
      '--clusterrole=impersonate-trudy',
      '--user=jane',
    ]);
    // trudy exists for the member only through jane's impersonation: the member answers as trudy
    const asTrudy = await kubectl(jane, ['--as=trudy', 'get', 'pods']);
    assert.notEqual(asTrudy.code, 0);
    assert.match(asTrudy.stderr, /User "trudy" cannot list resource "pods"/);
    const withGroup = await kubectl(jane, ['--as=trudy', '--as-group=system:masters', 'get', 'pods']);
    assert.notEqual(withGroup.code, 0);
    assert.match(withGroup.stderr, /user "jane" may not impersonate group "system:masters"/);
  });

  test('exec (an upgrade) is authorised as jane', async () => {
    // no controllers run here: the ServiceAccount a pod needs is made by hand
    await must(member.kubeconfig, ['create', 'serviceaccount', 'default', '-n', 'default']);
    await must(
      member.kubeconfig,
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'target', namespace: 'default' },
        spec: {
          nodeName: 'nowhere',
          automountServiceAccountToken: false,
          containers: [{ name: 'c', image: 'busybox' }],
        },
      }),
    );
    const r = await kubectl(jane, ['exec', '-n', 'default', 'target', '--', 'true']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /User "jane" cannot (create|get) resource "pods\/exec"/);
  });

  test('one access-log line per request: cluster, user, groups, verb, resource, path, status, Audit-ID', async () => {
    const from = stack.proxy!.output.length;
    await must(jane, ['get', 'configmaps', '-n', 'default']);
    const line = await stack.proxy!.waitFor(
      pattern(
        /access cluster=alpha user=jane groups=viewers verb=list resource=configmaps namespace=default /,
        /path="?\/api\/v1\/namespaces\/default\/configmaps\S* status=200 duration=\d+ms /,
        /remote=127\.0\.0\.1 auditId=[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n/,
      ),
      5000,
      from,
    );
    assert.ok(line);
  });
});

describe("who the member sees is never the client's word", () => {
  /** A request to the echo cluster as jane, with `headers`; what reached the upstream. */
  async function echoed(
    headers: Record<string, string | string[]>,
    path = '/api',
  ): Promise<{ status: number; seen: IncomingHttpHeaders | undefined }> {
    const doc = parse(readFileSync(echoJane, 'utf8'));
    const user = doc.users[0].user;
    const before = upstream.requests.length;
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: stack.gatewayPort,
          path: `/clusters/echo${path}`,
          headers,
          agent: false,
          ca: Buffer.from(doc.clusters[0].cluster['certificate-authority-data'], 'base64'),
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
    return { status, seen: upstream.requests.length > before ? upstream.requests.at(-1)!.headers : undefined };
  }

  test(
    "a client's Authorization and X-Remote-* never arrive; " +
      "the certificate's identity does, with the agent's credential",
    async () => {
      const { status, seen } = await echoed({
        authorization: 'Bearer stolen',
        'x-remote-user': 'root',
        'x-remote-group': 'system:masters',
        'x-remote-extra-scope': 'all',
      });
      assert.equal(status, 200);
      assert.equal(
        seen!.authorization,
        `Bearer ${upstream.token}`,
        'the agent added its own token; the proxy never had it',
      );
      assert.equal(seen!['impersonate-user'], 'jane');
      assert.equal(seen!['impersonate-group'], 'viewers');
      assert.deepEqual(
        Object.keys(seen!).filter((k) => k.startsWith('x-remote-')),
        [],
      );
    },
  );

  test("an impersonation the member allowed is forwarded in place of the client's headers", async () => {
    upstream.impersonation.add('jane users bob').add('jane groups ops');
    const { status, seen } = await echoed({
      'impersonate-user': 'bob',
      'impersonate-group': 'ops',
      'x-remote-user': 'root',
    });
    assert.equal(status, 200);
    assert.equal(seen!['impersonate-user'], 'bob');
    assert.equal(seen!['impersonate-group'], 'ops');
    assert.ok(
      upstream.reviews.includes('jane users bob') && upstream.reviews.includes('jane groups ops'),
      'the member was asked',
    );
    const denied = await echoed({ 'impersonate-user': 'eve' });
    assert.equal(denied.status, 403);
    assert.equal(denied.seen, undefined, 'a refused impersonation reaches nothing');
    // a group without a user, or two users, is malformed: kube-apiserver would refuse it too
    const malformedHeaders: Record<string, string | string[]>[] = [
      { 'impersonate-group': 'ops' },
      { 'impersonate-user': ['bob', 'eve'] },
    ];
    for (const headers of malformedHeaders) {
      const malformed = await echoed(headers);
      assert.equal(malformed.status, 400, JSON.stringify(headers));
      assert.equal(malformed.seen, undefined);
    }
  });

  test('the Kubernetes verb of a request, for the access log', () => {
    assert.equal(kubernetesVerb('GET', '/api/v1/pods'), 'list');
    assert.equal(kubernetesVerb('GET', '/api/v1/namespaces/default/pods/x'), 'get');
    assert.equal(kubernetesVerb('GET', '/api/v1/namespaces/default'), 'get');
    assert.equal(kubernetesVerb('GET', '/apis/apps/v1/namespaces/a/deployments?watch=true'), 'watch');
    assert.equal(kubernetesVerb('DELETE', '/api/v1/namespaces/a/pods'), 'deletecollection');
    assert.equal(kubernetesVerb('POST', '/api/v1/namespaces'), 'create');
    assert.equal(kubernetesVerb('GET', '/version'), 'get');
  });
});

describe('--gateway-identity agent and --allow-unbound-certificates, the opt-outs', () => {
  let legacy: Stack;
  before(async () => {
    legacy = new Stack();
    await legacy.startProxy(['--gateway-identity', 'agent', '--allow-unbound-certificates']);
    const { token } = await legacy.token('alpha');
    await legacy.startAgent('alpha', token, member.kubeconfig).waitFor(/connected to proxy/);
  });
  after(async () => {
    await legacy?.close();
  });

  test("the old behaviour, announced: jane acts with the agent's full rights", async () => {
    assert.match(
      legacy.proxy!.output,
      /WARN .*--gateway-identity agent: every gateway user acts in the members with the full rights of their agents/,
    );
    const legacyJane = await legacy.kubeconfig('alpha', ['--user', 'jane', '--group', 'viewers']);
    const r = await kubectl(legacyJane, ['create', 'namespace', 'legacy-jane']);
    assert.equal(r.code, 0, r.stderr);
  });

  test('a certificate without a cluster binding reaches any cluster; an unknown one is then a 404', async () => {
    const ca = await CertificateAuthority.load(
      {
        cert: readFileSync(join(legacy.dataDir, 'ca.crt'), 'utf8'),
        key: readFileSync(join(legacy.dataDir, 'ca.key'), 'utf8'),
      },
      'test',
    );
    const leaf = await ca.issueClient('ops', ['system:masters']);
    const get = (path: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = request(
          {
            host: '127.0.0.1',
            port: legacy.gatewayPort,
            path,
            ca: ca.certPem,
            cert: leaf.cert,
            key: leaf.key,
            agent: false,
          },
          (res) => {
            let body = '';
            res
              .setEncoding('utf8')
              .on('data', (d: string) => {
                body += d;
              })
              .on('end', () => resolve({ status: res.statusCode!, body }));
          },
        );
        req.on('error', reject);
        req.end();
      });
    assert.equal((await get('/clusters/alpha/version')).status, 200);
    const missing = await get('/clusters/nosuch/version');
    assert.equal(missing.status, 404);
    assert.match(
      JSON.parse(missing.body).message,
      /cluster "nosuch" not found in tower \(register it with: tower token nosuch\)/,
    );
  });
});
