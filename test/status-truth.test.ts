// Kubernetes mode: the Clusters' AgentAvailable, and `tower clusters`, never say an agent is available once
// no proxy serves it any more: the last replica stopping says so on its way out; one killed outright leaves
// a Lease that lapses, which `tower clusters` finds and writes down.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { pattern } from './support/pattern.ts';
import { condition, KubeHost, type ClusterResource } from './support/kube.ts';
import { tempDir, tower, waitUntil } from './support/tower.ts';

let host: KubeHost;
let member: MemberCluster;

before(async () => {
  [host, member] = await Promise.all([KubeHost.start(), startMemberCluster()]);
});

after(async () => {
  await Promise.all([host?.close(), member?.stop()]);
});

const available = (c: ClusterResource) => condition(c, 'AgentAvailable')?.status === 'True';
const REPLICA_LEASE = ['--server-lease-duration', '4s', '--server-lease-renew-period', '1s'];

/** a proxy serving Cluster `name` with its agent connected, AgentAvailable True */
async function serving(name: string) {
  const proxy = await host.startProxy(REPLICA_LEASE);
  await host.applyCluster(name);
  const c = await host.waitCluster(name, 'a token', (x) => Boolean(x.spec?.connection?.token));
  const agent = host.startAgent(name, c.spec!.connection!.token!, proxy.agentPort, member);
  await agent.waitFor(/connected to proxy/);
  await host.waitCluster(name, 'AgentAvailable True', available);
  const listed = await host.tower(['clusters']);
  assert.match(listed.stdout, new RegExp(`^${name}\\s+1\\s`, 'm'), listed.stdout);
  return { proxy, agent };
}

test('SIGTERM of the last replica: on its way out it sets AgentAvailable Unknown; tower clusters says 0', async () => {
  const { proxy, agent } = await serving('alpha');
  assert.equal(await proxy.stop('SIGTERM'), 0, proxy.output);
  const c = await host.get('alpha');
  const cond = condition(c, 'AgentAvailable');
  // not True any more; Unknown, since no proxy can tell whether the agent still runs
  assert.equal(cond?.status, 'Unknown', JSON.stringify(c?.status));
  assert.equal(cond?.reason, 'ProxyStopped');
  assert.match(cond?.message ?? '', /No tower proxy serves this cluster: the last replica stopped/);
  const listed = await host.tower(['clusters']);
  assert.equal(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, /^alpha\s+0\s/m, listed.stdout);
  await agent.stop();
});

/** a kubeconfig of a ServiceAccount that may read Clusters and Leases, and write nothing */
async function readerKubeconfig(): Promise<string> {
  const ns = ['-n', 'kubesphere-system'];
  await host.must([...ns, 'create', 'serviceaccount', 'reader']);
  await host.must(['create', 'clusterrole', 'cluster-reader', '--verb=get,list', '--resource=clusters']);
  await host.must([
    'create',
    'clusterrolebinding',
    'cluster-reader',
    '--clusterrole=cluster-reader',
    '--serviceaccount=kubesphere-system:reader',
  ]);
  await host.must([...ns, 'create', 'role', 'lease-reader', '--verb=get,list', '--resource=leases']);
  await host.must([
    ...ns,
    'create',
    'rolebinding',
    'lease-reader',
    '--role=lease-reader',
    '--serviceaccount=kubesphere-system:reader',
  ]);
  const token = (await host.must([...ns, 'create', 'token', 'reader', '--duration', '1h'])).trim();
  const path = join(tempDir('reader'), 'kubeconfig');
  const ca = Buffer.from(host.cluster.caPem).toString('base64');
  writeFileSync(
    path,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'host', cluster: { server: host.cluster.server, 'certificate-authority-data': ca } }],
      users: [{ name: 'reader', user: { token } }],
      contexts: [{ name: 'reader', context: { cluster: 'host', user: 'reader' } }],
      'current-context': 'reader',
    }),
  );
  return path;
}

test(
  'SIGKILL of the last replica: its Lease lapses, and tower clusters finds that, says 0 and sets AgentAvailable ' +
    'Unknown where it may; a proxy that starts again finds the agent back without a flap',
  async () => {
    const { proxy, agent } = await serving('beta');
    const since = condition((await host.get('beta'))!, 'AgentAvailable')!.lastTransitionTime;
    await proxy.stop('SIGKILL');
    // the Cluster still says what was last written: nobody is left to write
    assert.ok(available((await host.get('beta'))!));
    // a reader that may not write Clusters: sees the truth, changes nothing
    const reader = await readerKubeconfig();
    const read = await waitUntil(
      'tower clusters (as a reader) to read the lapsed Lease',
      async () => {
        const r = await tower(['clusters', '-o', 'wide', '--kubeconfig', reader], { TOWER_HOME: host.dir });
        return /^beta\s+0\s/m.test(r.stdout) ? r : undefined;
      },
      60_000,
      500,
    );
    assert.equal(read.code, 0, read.stderr);
    assert.match(
      read.stdout,
      pattern(
        /no tower proxy serves it: every replica's Lease has lapsed .*still says AgentAvailable True /,
        /\(this kubeconfig may not update Clusters to correct it\)/,
      ),
    );
    assert.ok(available((await host.get('beta'))!));
    // one that may: the condition is what a stopping last replica leaves
    const listed = await host.tower(['clusters', '-o', 'wide']);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /^beta\s+0\s/m, listed.stdout);
    assert.match(
      listed.stderr,
      /^set AgentAvailable Unknown on Cluster beta: no tower proxy serves it: every replica's Lease has lapsed/m,
    );
    const cond = condition((await host.get('beta'))!, 'AgentAvailable');
    assert.equal(cond?.status, 'Unknown');
    assert.equal(cond?.reason, 'ProxyStopped');
    assert.match(cond?.message ?? '', /every replica's Lease has lapsed/);
    assert.equal(cond?.lastTransitionTime, since);
    // the proxy back on the agent's port: the agent reconnects, and the condition is True as it was (no flap)
    const again = await host.startProxy(REPLICA_LEASE, { agentPort: proxy.agentPort });
    const back = await host.waitCluster('beta', 'AgentAvailable True again', available, 60_000);
    assert.equal(condition(back, 'AgentAvailable')?.lastTransitionTime, since);
    await agent.stop();
    await again.stop('SIGTERM');
  },
);
