// Install, upgrade and uninstall that leave what tower shares with KubeSphere alone: the namespace and the Cluster
// CRD come only on request, everything tower makes carries its labels, and `tower uninstall` deletes exactly that.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { KubeHost } from './support/kube.ts';
import { kubectl } from './support/stack.ts';
import { tower, waitUntil } from './support/tower.ts';

const KINDS =
  'deployments,services,serviceaccounts,secrets,configmaps,leases,poddisruptionbudgets,networkpolicies,roles,' +
  'rolebindings,clusterroles,clusterrolebindings';
const ADDRESS = ['--publish-service-address', 'tower.example.com'];
const CRD = 'crd/clusters.cluster.kubesphere.io';

let host: KubeHost;
let plain: MemberCluster;

before(async () => {
  [host, plain] = await Promise.all([KubeHost.start(), startMemberCluster()]);
});

after(async () => {
  await Promise.all([host?.close(), plain?.stop()]);
});

async function must(kubeconfig: string, args: string[], input?: string): Promise<string> {
  const r = await kubectl(kubeconfig, args, input);
  assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function printed(args: string[]): Promise<string> {
  const r = await tower(args);
  assert.equal(r.code, 0, `tower ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** everything in the cluster that carries tower's label, as kind/name */
async function labelled(kubeconfig: string, selector = 'app.kubernetes.io/managed-by=tower'): Promise<string[]> {
  const out = await must(kubeconfig, ['get', KINDS, '-A', '-l', selector, '-o', 'name']);
  return out.split('\n').filter(Boolean).sort();
}

test(
  'on a KubeSphere host: --with-crd is refused; uninstall deletes what tower made, installed or at run time, and ' +
    'keeps the CRD, the Clusters and the namespace',
  async () => {
    const before = await must(host.kubeconfig, ['get', CRD, '-o', 'json']);
    const refused = await tower(['install', 'proxy', ...ADDRESS, '--with-crd', '--kubeconfig', host.kubeconfig]);
    assert.equal(refused.code, 1);
    assert.equal(refused.stderr.trim().split('\n').length, 1, refused.stderr);
    assert.match(
      refused.stderr,
      /^tower install: the host already has a Cluster CRD \(clusters\.cluster\.kubesphere\.io\) that .*with-crd/,
    );
    assert.equal(refused.stdout, '');
    assert.equal(
      JSON.parse(await must(host.kubeconfig, ['get', CRD, '-o', 'json'])).metadata.resourceVersion,
      JSON.parse(before).metadata.resourceVersion,
    );

    const manifests = await printed([
      'install',
      'proxy',
      ...ADDRESS,
      '--replicas',
      '2',
      '--kubeconfig',
      host.kubeconfig,
    ]);
    await must(host.kubeconfig, ['apply', '-f', '-'], manifests);
    // what the proxy makes while it runs: its CA and host key, its record, Leases, a Service per cluster
    const proxy = await host.startProxy(['--leader-elect']);
    await host.applyCluster('alpha');
    await host.waitCluster('alpha', 'initialized', (c) => !!c.spec?.connection?.kubernetesAPIEndpoint);
    await waitUntil(
      "the writers' Lease",
      async () => (await kubectl(host.kubeconfig, ['-n', 'kubesphere-system', 'get', 'lease', 'tower'])).code === 0,
    );
    await proxy.stop();
    const made = await labelled(host.kubeconfig);
    for (const name of [
      'secret/tower-ca',
      'secret/tower-ssh-host-key',
      'configmap/tower-proxy',
      'service/mc-alpha',
      'lease.coordination.k8s.io/tower',
      'deployment.apps/tower',
      'service/tower',
      'clusterrole.rbac.authorization.k8s.io/tower',
      'poddisruptionbudget.policy/tower',
    ])
      assert.ok(made.includes(name), `${name} is not labelled: ${made.join(' ')}`);

    const dry = await tower(['uninstall', 'proxy', '--kubeconfig', host.kubeconfig, '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /^would delete Deployment kubesphere-system\/tower$/m);
    assert.match(dry.stdout, /^would delete Service kubesphere-system\/mc-alpha$/m);
    assert.doesNotMatch(dry.stdout, /tower-ca|tower-ssh-host-key|Namespace|CustomResourceDefinition/);
    assert.deepEqual(await labelled(host.kubeconfig), made, '--dry-run deleted something');

    const gone = await tower(['uninstall', 'proxy', '--kubeconfig', host.kubeconfig]);
    assert.equal(gone.code, 0, gone.stderr);
    // tower's identity stays for a reinstall: the kubeconfigs it issued and the agents' fingerprint still hold
    assert.deepEqual(await labelled(host.kubeconfig), ['secret/tower-ca', 'secret/tower-ssh-host-key']);
    await must(host.kubeconfig, ['get', CRD]);
    assert.ok(await host.get('alpha'), 'the Cluster was deleted');
    assert.match(
      await must(host.kubeconfig, ['get', 'namespace', 'kubesphere-system', '-o', 'name']),
      /kubesphere-system/,
    );

    // objects of someone else's that carry tower's labels (anyone who may patch them can set a label): not
    // tower's names, so not deleted, the cluster-scoped ones least of all
    const labels = [
      'app.kubernetes.io/managed-by=tower',
      'app.kubernetes.io/part-of=tower',
      'app.kubernetes.io/instance=tower-proxy',
    ];
    await must(host.kubeconfig, ['create', 'clusterrole', 'someone-elses', '--verb=get', '--resource=pods']);
    await must(host.kubeconfig, ['label', 'clusterrole', 'someone-elses', ...labels]);
    await must(host.kubeconfig, ['-n', 'kubesphere-system', 'create', 'secret', 'generic', 'kubesphere-secret']);
    await must(host.kubeconfig, ['-n', 'kubesphere-system', 'label', 'secret', 'kubesphere-secret', ...labels]);

    const purged = await tower(['uninstall', 'proxy', '--kubeconfig', host.kubeconfig, '--purge']);
    assert.equal(purged.code, 0, purged.stderr);
    assert.deepEqual(await labelled(host.kubeconfig), [
      'clusterrole.rbac.authorization.k8s.io/someone-elses',
      'secret/kubesphere-secret',
    ]);
    await must(host.kubeconfig, ['delete', 'clusterrole', 'someone-elses']);
    await must(host.kubeconfig, ['-n', 'kubesphere-system', 'delete', 'secret', 'kubesphere-secret']);

    // and the obvious `install | kubectl delete -f -` takes only what it printed
    await must(host.kubeconfig, ['apply', '-f', '-'], manifests);
    await must(host.kubeconfig, ['delete', '-f', '-'], manifests);
    await must(host.kubeconfig, ['get', CRD]);
    assert.ok(await host.get('alpha'), 'the Cluster was deleted');
    assert.deepEqual(await labelled(host.kubeconfig), []);
  },
);

test(
  'on a plain host: --with-crd --with-namespace bring the shared objects, the CRD names its KubeSphere version, an ' +
    'upgrade applies over them, and no uninstall touches them',
  async () => {
    const first = await printed([
      'install',
      'proxy',
      ...ADDRESS,
      '--with-crd',
      '--with-namespace',
      '--kubeconfig',
      plain.kubeconfig,
    ]);
    const docs = first
      .split(/^---$/m)
      .map(
        (d) => parseYaml(d) as { kind?: string; metadata: { annotations?: Record<string, string>; labels?: unknown } },
      )
      .filter(Boolean);
    const crd = docs.find((d) => d.kind === 'CustomResourceDefinition')!;
    assert.equal(crd.metadata.annotations?.['tower.kubesphere.io/kubesphere-version'], 'v4.1.0');
    assert.equal(crd.metadata.labels, undefined, 'a label-based delete would take the CRD');
    assert.equal(docs.find((d) => d.kind === 'Namespace')!.metadata.labels, undefined);
    await must(plain.kubeconfig, ['apply', '-f', '-'], first);
    await waitUntil(
      'the Cluster CRD to be served',
      async () => (await kubectl(plain.kubeconfig, ['get', 'clusters'])).code === 0,
    );
    await must(
      plain.kubeconfig,
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'cluster.kubesphere.io/v1alpha1',
        kind: 'Cluster',
        metadata: { name: 'beta' },
        spec: {},
      }),
    );
    // an upgrade: the CRD is tower's own, so --with-crd applies over it
    const upgrade = await printed([
      'install',
      'proxy',
      ...ADDRESS,
      '--with-crd',
      '--image',
      'tower:0.2.0',
      '--kubeconfig',
      plain.kubeconfig,
    ]);
    await must(plain.kubeconfig, ['apply', '-f', '-'], upgrade);
    assert.match(
      await must(plain.kubeconfig, [
        '-n',
        'kubesphere-system',
        'get',
        'deployment',
        'tower',
        '-o',
        'jsonpath={..image}',
      ]),
      /tower:0\.2\.0/,
    );

    // an agent beside the proxy: each uninstall takes its own part
    const agent = await printed([
      'install',
      'agent',
      '--name',
      'beta',
      '--token',
      'b'.repeat(64),
      '--proxy-server',
      'http://tower.example.com:8080',
      '--proxy-fingerprint',
      `SHA256:${'B'.repeat(43)}`,
      '--policy-preset',
      'read-only',
    ]);
    await must(plain.kubeconfig, ['apply', '-f', '-'], agent);
    const agentObjects = await labelled(plain.kubeconfig, 'app.kubernetes.io/instance=tower-agent');
    assert.ok(agentObjects.length >= 5, agentObjects.join(' '));
    const proxyObjects = await labelled(plain.kubeconfig, 'app.kubernetes.io/instance=tower-proxy');
    const agentGone = await tower(['uninstall', 'agent', '--kubeconfig', plain.kubeconfig]);
    assert.equal(agentGone.code, 0, agentGone.stderr);
    // the member's policy is its owner's, perhaps edited since: kept, as the CA is, unless --purge
    assert.deepEqual(await labelled(plain.kubeconfig, 'app.kubernetes.io/instance=tower-agent'), [
      'configmap/tower-agent-policy',
    ]);
    const agentPurged = await tower(['uninstall', 'agent', '--kubeconfig', plain.kubeconfig, '--purge']);
    assert.equal(agentPurged.code, 0, agentPurged.stderr);
    assert.deepEqual(await labelled(plain.kubeconfig, 'app.kubernetes.io/instance=tower-agent'), []);
    assert.deepEqual(await labelled(plain.kubeconfig, 'app.kubernetes.io/instance=tower-proxy'), proxyObjects);

    const proxyGone = await tower(['uninstall', 'proxy', '--kubeconfig', plain.kubeconfig, '--purge']);
    assert.equal(proxyGone.code, 0, proxyGone.stderr);
    assert.deepEqual(await labelled(plain.kubeconfig), []);
    await must(plain.kubeconfig, ['get', CRD]);
    await must(plain.kubeconfig, ['get', 'cluster', 'beta']);
    await must(plain.kubeconfig, ['get', 'namespace', 'kubesphere-system']);
    const again = await tower(['uninstall', 'proxy', '--kubeconfig', plain.kubeconfig]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^nothing of tower's proxy in https:\/\/127\.0\.0\.1:\d+$/m);
  },
);

test(
  'the Cluster CRD only with --kubeconfig (to check the host); ' + 'values kubectl would read as YAML 1.1 are quoted',
  async () => {
    for (const args of [
      ['install', 'crd'],
      ['install', 'proxy', ...ADDRESS, '--with-crd'],
    ]) {
      const r = await tower(args);
      assert.equal(r.code, 1, args.join(' '));
      assert.match(r.stderr, /^tower install: printing the Cluster CRD needs --kubeconfig <host>: /);
      assert.equal(r.stdout, '');
    }
    // YAML 1.2 would print `team: on`, which kubectl reads as true: the policy would then select nothing
    const out = await printed([
      'install',
      'proxy',
      ...ADDRESS,
      '--metrics-from-namespaces',
      'team=on',
      '--kube-version',
      '1.25',
    ]);
    assert.match(out, /^ +team: "on"$/m);
  },
);
