// The member policy's reading of a request head (as kube-apiserver reads it) and its rules, without a
// process: the end-to-end tests (member-policy.test.ts) show what reaches the member.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { judge, parsePolicy, presetPolicy, PolicyError } from '../../src/agent/policy.ts';
import { requestInfo, type RequestInfo } from '../../src/agent/request-info.ts';

const JANE = [
  { name: 'impersonate-user', value: 'jane' },
  { name: 'impersonate-group', value: 'viewers' },
];

function info(method: string, target: string, lines = JANE): RequestInfo {
  const i = requestInfo(method, target, lines);
  assert.equal(typeof i, 'object', `${method} ${target} is read: ${String(i)}`);
  return i as RequestInfo;
}

function brief(i: RequestInfo): string {
  return i.resourceRequest
    ? `${i.verb} ${i.apiGroup}/${i.resource} ns=${i.namespace} name=${i.name}`
    : `${i.verb} ${i.path}`;
}

test('requests are read as kube-apiserver reads them: verb, group, resource, subresource, namespace', () => {
  const cases: [string, string, string][] = [
    ['GET', '/api/v1/namespaces/default/pods', 'list /pods ns=default name='],
    ['GET', '/api/v1/namespaces/default/pods?watch=true&resourceVersion=1', 'watch /pods ns=default name='],
    ['GET', '/api/v1/namespaces/default/pods?watch=1', 'watch /pods ns=default name='],
    ['GET', '/api/v1/namespaces/default/pods?watch=false', 'list /pods ns=default name='],
    ['GET', '/api/v1/namespaces/default/pods?watch=FALSE', 'list /pods ns=default name='],
    ['GET', '/api/v1/namespaces/default/pods?watch=0', 'list /pods ns=default name='],
    // apimachinery reads every other value as true: "no" and "" are watches too
    ['GET', '/api/v1/namespaces/default/pods?watch=no', 'watch /pods ns=default name='],
    ['GET', '/api/v1/namespaces/default/pods?watch=', 'watch /pods ns=default name='],
    ['GET', '/api/v1/watch/namespaces/default/pods', 'watch /pods ns=default name='],
    ['GET', '/api/v1/namespaces/default/pods/web', 'get /pods ns=default name=web'],
    ['HEAD', '/api/v1/namespaces/default/pods/web', 'get /pods ns=default name=web'],
    ['POST', '/api/v1/namespaces/default/pods/web/exec?command=sh', 'create /pods/exec ns=default name=web'],
    ['GET', '/api/v1/namespaces/default/pods/web/exec?command=sh', 'create /pods/exec ns=default name=web'],
    ['GET', '/api/v1/namespaces/default/pods/web/log', 'get /pods/log ns=default name=web'],
    ['DELETE', '/api/v1/namespaces/default/pods', 'deletecollection /pods ns=default name='],
    ['DELETE', '/api/v1/namespaces/default/pods/web', 'delete /pods ns=default name=web'],
    ['PUT', '/apis/apps/v1/namespaces/a/deployments/d/scale', 'update apps/deployments/scale ns=a name=d'],
    ['PATCH', '/apis/apps/v1/namespaces/a/deployments/d', 'patch apps/deployments ns=a name=d'],
    ['GET', '/api/v1/namespaces/team-a', 'get /namespaces ns=team-a name=team-a'],
    ['PUT', '/api/v1/namespaces/team-a/finalize', 'update /namespaces/finalize ns=team-a name=team-a'],
    ['POST', '/api/v1/namespaces', 'create /namespaces ns= name='],
    ['GET', '/api/v1/secrets', 'list /secrets ns= name='],
    ['GET', '/api/v1/namespaces/default/%73ecrets/x', 'get /secrets ns=default name=x'],
    ['GET', '/api/v1/namespaces/default/services/web/proxy/a/b', 'get /services/proxy ns=default name=web'],
    ['GET', '/api/v1/proxy/namespaces/default/services/web', 'proxy /services ns=default name=web'],
    ['GET', '/api', 'get /api'],
    ['GET', '/apis/apps/v1', 'get /apis/apps/v1'],
    ['GET', '/version', 'get /version'],
    ['POST', '/logs', 'post /logs'],
  ];
  for (const [method, target, expected] of cases) assert.equal(brief(info(method, target)), expected, target);
});

test('who a request acts as: the impersonated user and groups, with those kube-apiserver adds; or the agent', () => {
  assert.deepEqual(info('GET', '/api').subject, {
    agent: false,
    user: 'jane',
    groups: ['viewers', 'system:authenticated'],
  });
  assert.deepEqual(info('GET', '/api', []).subject, { agent: true, user: '', groups: [] });
  const sa = info('GET', '/api', [{ name: 'impersonate-user', value: 'system:serviceaccount:ci:builder' }]);
  assert.deepEqual(sa.subject.groups, ['system:serviceaccounts', 'system:serviceaccounts:ci', 'system:authenticated']);
  const saWithGroup = info('GET', '/api', [
    { name: 'impersonate-user', value: 'system:serviceaccount:ci:builder' },
    { name: 'impersonate-group', value: 'ci' },
  ]);
  assert.deepEqual(saWithGroup.subject.groups, ['ci', 'system:authenticated'], 'given groups replace the SA groups');
  const anonymous = info('GET', '/api', [{ name: 'impersonate-user', value: 'system:anonymous' }]);
  assert.deepEqual(anonymous.subject.groups, ['system:unauthenticated']);
  // a head is read byte for byte (latin1): the name is the UTF-8 the member reads
  const jose = info('GET', '/api', [{ name: 'impersonate-user', value: Buffer.from('josé').toString('latin1') }]);
  assert.equal(jose.subject.user, 'josé');
});

test('a head the member could read otherwise than the agent is never judged: why is said', () => {
  const cases: [string, string, { name: string; value: string }[], RegExp][] = [
    ['GET', '/api/v1/namespaces/default//secrets', JANE, /empty/],
    ['GET', '/api/v1/namespaces/default/./secrets', JANE, /"\."/],
    ['GET', '/api/v1/namespaces/default/pods/%2e%2e/x', JANE, /"\.\."/],
    ['GET', '/api/v1/pods?watch=true;watch=false', JANE, /";"/],
    ['GET', '/api', [{ name: 'impersonate-user', value: 'jos\xe9' }], /not UTF-8/],
    ['GET', '/api/v1/pods/%zz', JANE, /escape/],
    ['GET', 'http://member/api/v1/pods', JANE, /not a path/],
    ['GET', '/api', [...JANE, { name: 'impersonate-user', value: 'root' }], /twice/],
    ['GET', '/api', [{ name: 'impersonate-group', value: 'system:masters' }], /without Impersonate-User/],
    ['GET', '/api', [{ name: 'impersonate-user', value: '' }], /empty/],
  ];
  for (const [method, target, lines, why] of cases) {
    const r = requestInfo(method, target, lines);
    assert.equal(typeof r, 'string', `${target} is not judged`);
    assert.match(r as string, why);
  }
});

test('the read-only preset: reads pass; writes, exec, Secrets and the agent itself are refused by name', () => {
  const p = parsePolicy(presetPolicy('read-only'));
  const verdict = (method: string, target: string, lines = JANE) => {
    const v = judge(p, info(method, target, lines));
    return v.allowed ? 'allowed' : `refused by ${v.rule ?? '(default)'}`;
  };
  assert.equal(verdict('GET', '/api/v1/namespaces/default/pods'), 'allowed');
  assert.equal(verdict('GET', '/api/v1/namespaces/default/pods?watch=true'), 'allowed');
  assert.equal(verdict('GET', '/apis'), 'allowed');
  assert.equal(verdict('GET', '/logs/'), 'refused by (default)', "the apiserver host's logs are no resource to read");
  assert.equal(verdict('GET', '/debug/pprof/profile'), 'refused by (default)');
  assert.equal(
    verdict('GET', '/apis/subresources.kubevirt.io/v1/namespaces/a/virtualmachineinstances/vm/vnc'),
    'refused by never-into-pods',
  );
  assert.equal(verdict('POST', '/api/v1/namespaces/default/pods'), 'refused by (default)');
  assert.equal(verdict('DELETE', '/api/v1/namespaces/default/pods/web'), 'refused by (default)');
  assert.equal(verdict('POST', '/api/v1/namespaces/default/pods/web/exec'), 'refused by never-into-pods');
  assert.equal(verdict('GET', '/api/v1/namespaces/default/pods/web/exec'), 'refused by never-into-pods');
  assert.equal(verdict('GET', '/api/v1/namespaces/default/services/web/proxy/'), 'refused by never-into-pods');
  assert.equal(verdict('GET', '/api/v1/namespaces/default/secrets'), 'refused by never-secrets');
  assert.equal(verdict('GET', '/api/v1/namespaces/default/%73ecrets'), 'refused by never-secrets');
  assert.equal(verdict('GET', '/api/v1/watch/secrets'), 'refused by never-secrets');
  assert.equal(verdict('GET', '/api/v1/namespaces', []), 'refused by not-as-the-agent');
  assert.equal(
    verdict('POST', '/apis/authorization.k8s.io/v1/subjectaccessreviews', []),
    'allowed',
    'the proxy may ask the member about impersonation',
  );
});

test('the namespaced preset: anything in its namespaces, discovery, and nothing else', () => {
  const p = parsePolicy(presetPolicy('namespaced', ['team-a']));
  const allowed = (method: string, target: string) => judge(p, info(method, target)).allowed;
  assert.ok(allowed('POST', '/api/v1/namespaces/team-a/pods'));
  assert.ok(allowed('POST', '/api/v1/namespaces/team-a/pods/web/exec'));
  assert.ok(allowed('GET', '/api/v1/namespaces/team-a'));
  assert.ok(!allowed('PATCH', '/api/v1/namespaces/team-a'), "its labels stay the owner's");
  assert.ok(!allowed('DELETE', '/api/v1/namespaces/team-a'));
  assert.ok(!allowed('PUT', '/api/v1/namespaces/team-a/finalize'));
  assert.ok(allowed('GET', '/apis/apps/v1'));
  assert.ok(!allowed('GET', '/api/v1/namespaces/team-b/pods'));
  assert.ok(!allowed('GET', '/api/v1/pods'), 'a list across namespaces is not in team-a');
  assert.ok(!allowed('POST', '/api/v1/namespaces'));
  assert.ok(!allowed('GET', '/metrics'));
  assert.throws(() => presetPolicy('namespaced', []), PolicyError);
});

test('rules match as RBAC does: groups, users, wildcards, subresources, non-resource URLs', () => {
  const p = parsePolicy(`
rules:
  - name: no-masters
    action: deny
    groups: [system:masters]
  - name: pods-any-subresource
    action: allow
    resources: ["pods/*"]
  - name: scale-anything
    action: allow
    resources: ["*/scale"]
    apiGroups: ["*"]
  - name: ci-may-write-core
    action: allow
    users: [system:serviceaccount:ci:builder]
    apiGroups: [""]
  - name: health
    action: allow
    nonResourceURLs: [/healthz, /livez*]
default: deny
`);
  const allowed = (method: string, target: string, lines = JANE) => judge(p, info(method, target, lines)).allowed;
  const masters = [...JANE, { name: 'impersonate-group', value: 'system:masters' }];
  const ci = [{ name: 'impersonate-user', value: 'system:serviceaccount:ci:builder' }];
  assert.ok(!allowed('GET', '/api/v1/namespaces/a/pods/x/log', masters));
  assert.ok(allowed('GET', '/api/v1/namespaces/a/pods/x/log'));
  assert.ok(!allowed('GET', '/api/v1/namespaces/a/pods/x'), '"pods/*" is not "pods"');
  assert.ok(allowed('PUT', '/apis/apps/v1/namespaces/a/deployments/d/scale'));
  assert.ok(allowed('POST', '/api/v1/namespaces/a/configmaps', ci));
  assert.ok(!allowed('POST', '/apis/apps/v1/namespaces/a/deployments', ci));
  assert.ok(allowed('GET', '/livez/ping'));
  assert.ok(!allowed('GET', '/healthz/x'));
});

test('a malformed policy is refused whole, naming the field', () => {
  const bad: [string, RegExp][] = [
    ['rules: [{name: a, action: maybe}]', /action must be allow or deny/],
    ['rules: [{name: a, action: allow, verb: [get]}]', /unknown field verb/],
    ['rules: [{name: A, action: allow}]', /name must be/],
    ['rules: [{name: a, action: allow}, {name: a, action: deny}]', /two rules are named "a"/],
    ['rules: [{name: a, action: allow, resources: [pods], nonResourceURLs: [/x]}]', /cannot stand beside/],
    ['rules: [{name: a, action: allow, resources: ["pods/exec/x"]}]', /not a resource/],
    ['rules: [{name: a, action: allow, verbs: []}]', /non-empty list/],
    ['defaults: allow', /unknown field "defaults"/],
    ['kind: Pod', /kind must be MemberPolicy/],
    ['- a', /expected a MemberPolicy object/],
    ['rules: [', /not YAML/],
  ];
  for (const [text, why] of bad) assert.throws(() => parsePolicy(text), why, text);
  assert.deepEqual(parsePolicy(''.concat('{}')), { rules: [], default: 'deny', kubesphere: 'deny' });
});
