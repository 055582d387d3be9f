// Kubernetes mode: the Clusters' AgentAvailable, and `tower clusters`, never say an agent is available once
// no proxy serves it any more: the last replica stopping says so on its way out; one killed outright leaves
// a Lease that lapses, and `tower clusters` reads that.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { condition, KubeHost, type ClusterResource } from './support/kube.ts';
import { waitUntil } from './support/tower.ts';

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

test('SIGKILL of the last replica: nothing writes, but tower clusters reads its lapsed Lease and says 0', async () => {
  const { proxy, agent } = await serving('beta');
  await proxy.stop('SIGKILL');
  // the Cluster still says what was last written: nobody is left to write
  assert.ok(available((await host.get('beta'))!));
  const listed = await waitUntil(
    'tower clusters to read the lapsed Lease',
    async () => {
      const r = await host.tower(['clusters', '-o', 'wide']);
      return /^beta\s+0\s/m.test(r.stdout) ? r : undefined;
    },
    60_000,
    500,
  );
  assert.match(listed.stdout, /no tower proxy serves it: every replica's Lease has lapsed/);
  await agent.stop();
});
