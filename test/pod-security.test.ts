// The manifests `tower install` prints, held to Pod Security "restricted": admitted by a real apiserver that
// enforces the restricted PodSecurityPolicy, and checked for the restricted rules PSP cannot express; one UID;
// several replicas spread; a NetworkPolicy that fences only the metrics port; plain YAML.
//
// Why PodSecurityPolicy and not PodSecurity admission: the test apiserver is Kubernetes 1.20, which has no
// PodSecurity admission (alpha in 1.22). The restricted PSP of the Kubernetes docs is the Pod Security Standards'
// predecessor; what it cannot say (the seccompProfile field, runAsNonRoot, which capabilities may be added, volume
// types as PSS lists them) is checked on the printed manifests below, in the same test.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { parseAllDocuments, parse as parseYaml, visit } from 'yaml';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { kubectl } from './support/stack.ts';
import { freePort, removeDir, tempDir, tower, TowerProcess } from './support/tower.ts';

const NS = 'kubesphere-system';
const USER = 'jane';
const UID = 65532;
const FINGERPRINT = `SHA256:${'A'.repeat(43)}`;
const AGENT = ['install', 'agent', '--name', 'alpha', '--token', 'a'.repeat(64)];
const AGENT_ADDR = ['--proxy-server', 'http://tower.example.com:8080', '--proxy-fingerprint', FINGERPRINT];

/** The Kubernetes docs' "restricted" PodSecurityPolicy (policy/v1beta1), seccomp limited to runtime/default. */
const RESTRICTED_PSP = {
  apiVersion: 'policy/v1beta1',
  kind: 'PodSecurityPolicy',
  metadata: {
    name: 'restricted',
    annotations: {
      'seccomp.security.alpha.kubernetes.io/allowedProfileNames': 'runtime/default',
      'seccomp.security.alpha.kubernetes.io/defaultProfileName': 'runtime/default',
    },
  },
  spec: {
    privileged: false,
    allowPrivilegeEscalation: false,
    requiredDropCapabilities: ['ALL'],
    volumes: ['configMap', 'emptyDir', 'projected', 'secret', 'downwardAPI', 'persistentVolumeClaim'],
    hostNetwork: false,
    hostIPC: false,
    hostPID: false,
    runAsUser: { rule: 'MustRunAsNonRoot' },
    seLinux: { rule: 'RunAsAny' },
    supplementalGroups: { rule: 'MustRunAs', ranges: [{ min: 1, max: 65535 }] },
    fsGroup: { rule: 'MustRunAs', ranges: [{ min: 1, max: 65535 }] },
    readOnlyRootFilesystem: false,
  },
};

/** a non-admin user who may create pods in the namespace and use only the restricted policy */
const RBAC = [
  {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRole',
    metadata: { name: 'psp-restricted' },
    rules: [
      { apiGroups: ['policy'], resources: ['podsecuritypolicies'], resourceNames: ['restricted'], verbs: ['use'] },
    ],
  },
  {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRoleBinding',
    metadata: { name: 'psp-restricted' },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'psp-restricted' },
    subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: USER }],
  },
  {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'Role',
    metadata: { name: 'pod-creator', namespace: NS },
    rules: [{ apiGroups: [''], resources: ['pods'], verbs: ['create'] }],
  },
  {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'RoleBinding',
    metadata: { name: 'pod-creator', namespace: NS },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'pod-creator' },
    subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: USER }],
  },
  // the pods name these; the ServiceAccount admission plugin wants them to exist
  { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'tower', namespace: NS } },
  { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'tower-agent', namespace: NS } },
];

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

let host: MemberCluster;
const dir = tempDir('pod-security');

before(async () => {
  host = await startMemberCluster({
    apiserverArgs: [
      '--enable-admission-plugins=PodSecurityPolicy',
      // the service account token as a projected volume, as from 1.21 (1.20's default wants a token Secret,
      // which no controller-manager creates here)
      '--feature-gates=BoundServiceAccountTokenVolume=true',
    ],
  });
  await must(['create', 'namespace', NS]);
  await must(
    ['apply', '-f', '-'],
    JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [RESTRICTED_PSP, ...RBAC] }),
  );
});

after(async () => {
  await host?.stop();
  removeDir(dir);
});

async function must(args: string[], input?: string): Promise<string> {
  const r = await kubectl(host.kubeconfig, args, input);
  assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function printed(args: string[]): Promise<{ yaml: string; docs: Obj[] }> {
  const r = await tower(args);
  assert.equal(r.code, 0, `tower ${args.join(' ')}: ${r.stderr}`);
  return {
    yaml: r.stdout,
    docs: r.stdout
      .split(/^---$/m)
      .map((d) => parseYaml(d) as Obj)
      .filter(Boolean),
  };
}

/** the Deployment's pod template as a bare Pod */
function podOf(docs: Obj[]): Obj {
  const d = docs.find((x) => x.kind === 'Deployment')!;
  const t = d.spec.template;
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: d.metadata.name, namespace: d.metadata.namespace, labels: t.metadata.labels },
    spec: t.spec,
  };
}

/** `kubectl create --dry-run=server` as the restricted user: admission runs, nothing is stored */
function submit(pod: Obj) {
  return kubectl(
    host.kubeconfig,
    ['create', '--dry-run=server', '--as', USER, '-o', 'json', '-f', '-'],
    JSON.stringify(pod),
  );
}

/**
 * What Pod Security "restricted" (v1.2x) forbids that PSP cannot say, and the rest again: the problems found in a
 * pod spec, none when it passes.
 */
function restrictedProblems(spec: Obj): string[] {
  const problems: string[] = [];
  const podSc = spec.securityContext ?? {};
  const allowedVolumes = [
    'configMap',
    'csi',
    'downwardAPI',
    'emptyDir',
    'ephemeral',
    'persistentVolumeClaim',
    'projected',
    'secret',
  ];
  for (const v of spec.volumes ?? []) {
    const kinds = Object.keys(v).filter((k) => k !== 'name');
    if (!kinds.every((k) => allowedVolumes.includes(k))) problems.push(`volume ${v.name} is ${kinds.join(',')}`);
  }
  if (spec.hostNetwork || spec.hostPID || spec.hostIPC) problems.push('host namespaces');
  if (spec.securityContext?.sysctls?.length) problems.push('sysctls');
  const podSeccomp = podSc.seccompProfile?.type;
  for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
    const sc = c.securityContext ?? {};
    if (sc.privileged) problems.push(`${c.name}: privileged`);
    if (sc.allowPrivilegeEscalation !== false) problems.push(`${c.name}: allowPrivilegeEscalation not false`);
    if (!(sc.runAsNonRoot === true || (podSc.runAsNonRoot === true && sc.runAsNonRoot !== false)))
      problems.push(`${c.name}: runAsNonRoot not true`);
    if ((sc.runAsUser ?? podSc.runAsUser) === 0) problems.push(`${c.name}: runAsUser 0`);
    const seccomp = sc.seccompProfile?.type ?? podSeccomp;
    if (seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') problems.push(`${c.name}: seccompProfile ${seccomp}`);
    if (!(sc.capabilities?.drop ?? []).includes('ALL')) problems.push(`${c.name}: capabilities not dropping ALL`);
    for (const cap of sc.capabilities?.add ?? [])
      if (cap !== 'NET_BIND_SERVICE') problems.push(`${c.name}: adds capability ${cap}`);
    if (sc.procMount && sc.procMount !== 'Default') problems.push(`${c.name}: procMount`);
    for (const p of c.ports ?? []) if (p.hostPort) problems.push(`${c.name}: hostPort ${p.hostPort}`);
  }
  return problems;
}

const VARIANTS: [string, string[]][] = [
  ['install proxy', ['install', 'proxy']],
  ['install proxy --replicas 3', ['install', 'proxy', '--replicas', '3', '--kube-version', '1.20']],
  [
    'install proxy with options',
    [
      'install',
      'proxy',
      '--replicas',
      '3',
      '--kube-version',
      '1.22',
      '--image',
      'registry.example/tower:1.0',
      '--service-type',
      'LoadBalancer',
      '--publish-service-address',
      'tower.example.com',
      '--metrics-from-namespaces',
      'kubernetes.io/metadata.name=monitoring',
    ],
  ],
  ['install agent', [...AGENT, ...AGENT_ADDR]],
  [
    'install agent with options',
    [...AGENT, ...AGENT_ADDR, '--cluster-admin', '--metrics-from-namespaces', 'team=monitoring'],
  ],
];

test('every pod tower install prints is admitted as is by the restricted PodSecurityPolicy, non-admin', async () => {
  for (const [what, args] of VARIANTS) {
    const pod = podOf((await printed(args)).docs);
    const r = await submit(pod);
    assert.equal(r.code, 0, `${what}: refused: ${r.stderr}`);
    const admitted = JSON.parse(r.stdout) as Obj;
    assert.equal(admitted.metadata.annotations?.['kubernetes.io/psp'], 'restricted', what);
    // PSP mutates what it can: had it added the drop or a default, the container would differ from ours
    assert.deepEqual(admitted.spec.containers[0].securityContext, pod.spec.containers[0].securityContext, what);
    for (const k of ['runAsNonRoot', 'runAsUser', 'runAsGroup', 'fsGroup', 'seccompProfile'])
      assert.deepEqual(admitted.spec.securityContext[k], pod.spec.securityContext[k], `${what}: pod ${k}`);
    assert.deepEqual(restrictedProblems(pod.spec), [], what);
    // the admitted pod too, with the token volume the ServiceAccount plugin added
    assert.deepEqual(restrictedProblems(admitted.spec), [], `${what} (admitted)`);
  }
});

test('the controls: a privileged or unconfined proxy pod is refused, one without the drop is changed', async () => {
  const pod = podOf((await printed(['install', 'proxy'])).docs);
  const privileged = structuredClone(pod);
  privileged.spec.containers[0].securityContext = {
    ...privileged.spec.containers[0].securityContext,
    privileged: true,
    allowPrivilegeEscalation: true,
  };
  const refused = await submit(privileged);
  assert.notEqual(refused.code, 0, 'a privileged pod was admitted');
  assert.match(refused.stderr, /PodSecurityPolicy: unable to admit pod: .*Privileged containers are not allowed/);
  assert.deepEqual(restrictedProblems(privileged.spec), [
    'proxy: privileged',
    'proxy: allowPrivilegeEscalation not false',
  ]);

  const unconfined = structuredClone(pod);
  unconfined.spec.securityContext.seccompProfile = { type: 'Unconfined' };
  unconfined.spec.containers[0].securityContext.seccompProfile = { type: 'Unconfined' };
  const refusedSeccomp = await submit(unconfined);
  assert.notEqual(refusedSeccomp.code, 0, 'an unconfined pod was admitted');
  assert.match(refusedSeccomp.stderr, /unconfined is not an allowed seccomp profile/);

  // PSP adds a required drop rather than refusing: the admitted container then differs from the submitted one
  const noDrop = structuredClone(pod);
  delete noDrop.spec.containers[0].securityContext.capabilities;
  const changed = await submit(noDrop);
  assert.equal(changed.code, 0, changed.stderr);
  assert.notDeepEqual(
    (JSON.parse(changed.stdout) as Obj).spec.containers[0].securityContext,
    noDrop.spec.containers[0].securityContext,
  );
  assert.deepEqual(restrictedProblems(noDrop.spec), ['proxy: capabilities not dropping ALL']);

  // what only the restricted standard says
  const added = structuredClone(pod);
  added.spec.containers[0].securityContext.capabilities.add = ['NET_ADMIN'];
  added.spec.containers[0].securityContext.runAsNonRoot = false;
  added.spec.volumes.push({ name: 'host', hostPath: { path: '/' } });
  assert.deepEqual(restrictedProblems(added.spec), [
    'volume host is hostPath',
    'proxy: runAsNonRoot not true',
    'proxy: adds capability NET_ADMIN',
  ]);
});

test('one UID, 65532 as in the image; several replicas spread over nodes; plain YAML', async () => {
  for (const [what, args] of VARIANTS) {
    const { yaml, docs } = await printed(args);
    assert.doesNotMatch(yaml, /65534/, what);
    const spec = podOf(docs).spec;
    assert.equal(spec.securityContext.runAsUser, UID, what);
    assert.equal(spec.securityContext.runAsGroup, UID, what);
    for (const c of spec.containers) assert.equal(c.securityContext.runAsUser ?? UID, UID, what);
    // no anchors nor aliases: kustomize and people patch it as they read it
    for (const doc of parseAllDocuments(yaml)) {
      visit(doc, {
        Alias: () => assert.fail(`${what}: an alias in the output`),
        Node: (_, node) => assert.equal((node as { anchor?: string }).anchor, undefined, `${what}: an anchor`),
      });
    }
    const deployment = docs.find((d) => d.kind === 'Deployment')!;
    if (deployment.spec.replicas > 1) {
      const selector = deployment.spec.selector;
      assert.deepEqual(spec.affinity, {
        podAntiAffinity: {
          preferredDuringSchedulingIgnoredDuringExecution: [
            { weight: 100, podAffinityTerm: { labelSelector: selector, topologyKey: 'kubernetes.io/hostname' } },
          ],
        },
      });
      assert.deepEqual(
        spec.topologySpreadConstraints.map((t: Obj) => [t.topologyKey, t.whenUnsatisfiable, t.labelSelector]),
        [
          ['kubernetes.io/hostname', 'ScheduleAnyway', selector],
          ['topology.kubernetes.io/zone', 'ScheduleAnyway', selector],
        ],
        what,
      );
    } else {
      assert.equal(spec.affinity, undefined, what);
      assert.equal(spec.topologySpreadConstraints, undefined, what);
    }
  }
  // and a real apiserver takes them all as they are
  for (const [what, args] of VARIANTS.slice(0, 2)) {
    const applied = await kubectl(
      host.kubeconfig,
      ['apply', '--dry-run=server', '-f', '-'],
      (await printed(args)).yaml,
    );
    assert.equal(applied.code, 0, `${what}: ${applied.stderr}`);
  }
});

test('--metrics-from-namespaces: a NetworkPolicy fences only the metrics port; the others stay open', async () => {
  const agent = await printed([
    ...AGENT,
    ...AGENT_ADDR,
    '--metrics-from-namespaces',
    'team=monitoring',
    '--metrics-from-pods',
    'app=prometheus',
  ]);
  const agentPolicy = agent.docs.find((d) => d.kind === 'NetworkPolicy')!;
  await must(['apply', '-f', '-'], JSON.stringify(agentPolicy));
  const stored = JSON.parse(await must(['-n', NS, 'get', 'networkpolicy', 'tower-agent', '-o', 'json'])) as Obj;
  // the agent only dials out: its health port (/metrics) is all it listens on
  assert.deepEqual(stored.spec, {
    podSelector: { matchLabels: podOf(agent.docs).metadata.labels },
    policyTypes: ['Ingress'],
    ingress: [
      {
        from: [
          {
            namespaceSelector: { matchLabels: { team: 'monitoring' } },
            podSelector: { matchLabels: { app: 'prometheus' } },
          },
        ],
        ports: [{ protocol: 'TCP', port: 8081 }],
      },
    ],
  });
  assert.equal(podOf(agent.docs).spec.containers[0].ports[0].containerPort, 8081);

  const proxy = await printed([
    'install',
    'proxy',
    '--kube-version',
    '1.22',
    '--metrics-from-namespaces',
    'kubernetes.io/metadata.name=monitoring',
  ]);
  const policy = proxy.docs.find((d) => d.kind === 'NetworkPolicy')!;
  const pod = podOf(proxy.docs);
  assert.deepEqual(policy.spec, {
    podSelector: { matchLabels: pod.metadata.labels },
    policyTypes: ['Ingress'],
    ingress: [
      {
        // from anywhere: agents, the gateway, and each cluster's two ports (its mc-<name> Service)
        ports: [
          { protocol: 'TCP', port: 8080 },
          { protocol: 'TCP', port: 6443 },
          { protocol: 'TCP', port: 6000, endPort: 7000 },
          { protocol: 'TCP', port: 16000, endPort: 17000 },
        ],
      },
      {
        from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }],
        ports: [{ protocol: 'TCP', port: 8081 }],
      },
    ],
  });
  // the fenced port is where the proxy serves /metrics, and scrapers are pointed there
  const c = pod.spec.containers[0];
  assert.ok(c.args.includes('--metrics-port=8081'));
  const annotations = proxy.docs.find((d) => d.kind === 'Deployment')!.spec.template.metadata.annotations;
  assert.equal(annotations['prometheus.io/port'], '8081');
  // endPort is 1.22's: this 1.20 apiserver takes the rest of the policy but drops the ranges, leaving only ports 6000
  // and 16000 of the clusters' ports open, which is why tower refuses to print it for a cluster before 1.22
  const dropped = JSON.parse(
    await must(['apply', '--dry-run=server', '--validate=false', '-o', 'json', '-f', '-'], JSON.stringify(policy)),
  ) as Obj;
  assert.deepEqual(
    dropped.spec.ingress[0].ports.map((p: Obj) => p.endPort),
    [undefined, undefined, undefined, undefined],
  );
  // asked, a 1.20 cluster is refused in one line, with what to do instead
  const old = await tower([
    'install',
    'proxy',
    '--publish-service-address',
    'tower.example.com',
    '--kubeconfig',
    host.kubeconfig,
    '--metrics-from-namespaces',
    'a=b',
  ]);
  assert.equal(old.code, 1);
  assert.equal(old.stderr.trim().split('\n').length, 1, old.stderr);
  assert.match(
    old.stderr,
    /^tower install: --metrics-from-namespaces needs Kubernetes 1\.22 or later .*this cluster is 1\.20/,
  );
  const podsAlone = await tower(['install', 'proxy', '--metrics-from-pods', 'a=b']);
  assert.equal(podsAlone.code, 1);
  assert.match(podsAlone.stderr, /--metrics-from-pods narrows --metrics-from-namespaces/);
  // without the flag, no policy
  assert.equal(
    (await printed(['install', 'proxy'])).docs.find((d) => d.kind === 'NetworkPolicy'),
    undefined,
  );
});

test('proxy --metrics-port: /metrics there and no longer on the agent port, whose probes stay', async () => {
  const home = tempDir('metrics-port');
  const proxy = new TowerProcess(
    'proxy',
    ['proxy', '--host', '127.0.0.1', '--port', String(await freePort()), '--gateway-port', '0', '--metrics-port', '0'],
    { TOWER_HOME: home },
  );
  try {
    const m = await proxy.waitFor(/proxy serving.* agents=127\.0\.0\.1:(\d+).* metrics=127\.0\.0\.1:(\d+)/, 60_000);
    const [agentPort, metricsPort] = [m[1], m[2]];
    const metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /^tower_proxy_/m);
    assert.equal((await fetch(`http://127.0.0.1:${metricsPort}/readyz`)).status, 200);
    const fenced = await fetch(`http://127.0.0.1:${agentPort}/metrics`);
    assert.equal(fenced.status, 404);
    await fenced.arrayBuffer();
    for (const path of ['/livez', '/readyz']) {
      const r = await fetch(`http://127.0.0.1:${agentPort}${path}`);
      assert.equal(r.status, 200, path);
      await r.arrayBuffer();
    }
  } finally {
    await proxy.stop();
    removeDir(home);
  }
});
