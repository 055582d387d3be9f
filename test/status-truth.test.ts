// Kubernetes mode: the Clusters' AgentAvailable, and `tower clusters`, never say an agent is available once
// no proxy serves it any more: the last replica stopping says so on its way out; one killed outright leaves
// a Lease that lapses, which `tower clusters` finds and writes down.
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { pattern } from './support/pattern.ts';
import { condition, KubeHost, replicaLease, type ClusterResource } from './support/kube.ts';
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
async function serving(name: string, env: NodeJS.ProcessEnv = {}) {
  const proxy = await host.startProxy(REPLICA_LEASE, { env });
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

/** the environment that runs a process with its clock `offset` from the machine's (libfaketime, preloaded) */
function clockOff(offset: string): NodeJS.ProcessEnv {
  const lib = ['x86_64-linux-gnu', 'aarch64-linux-gnu']
    .map((arch) => `/usr/lib/${arch}/faketime/libfaketime.so.1`)
    .find((path) => existsSync(path));
  assert.ok(lib, "libfaketime (Debian's faketime) is needed: apt-get install faketime");
  return { LD_PRELOAD: lib, FAKETIME: offset, FAKETIME_DONT_FAKE_MONOTONIC: '1' };
}

/** Lease `tower-proxy-<id>` as a replica writes it, renewed at `renewedAgoMs` before now by the test's clock */
async function writeLease(id: string, renewedAgoMs: number, name = `tower-proxy-${id}`): Promise<void> {
  const lease = replicaLease(name, id, new Date(Date.now() - renewedAgoMs), { seconds: 4 });
  await host.must(['apply', '-f', '-'], JSON.stringify(lease));
}

/** Cluster `name` saying AgentAvailable True, last written `writtenAgoMs` ago, as if a proxy had set it */
async function claimAvailable(name: string, writtenAgoMs: number): Promise<void> {
  const at = new Date(Date.now() - writtenAgoMs).toISOString().replace(/\.\d+Z$/, 'Z');
  const conditions = [
    { type: 'AgentAvailable', status: 'True', lastUpdateTime: at, lastTransitionTime: at, message: 'connected' },
  ];
  await host.must(['patch', 'cluster', name, '--type', 'merge', '-p', JSON.stringify({ status: { conditions } })]);
}

test(
  'what tower clusters does not take for a lapse: a replica whose clock runs behind, still renewing; a Lease ' +
    "that is not a replica's; a condition written after the Leases lapsed",
  async () => {
    // the Leases the tests before left (a killed replica's stays until another replica deletes it)
    await host.must(['-n', 'kubesphere-system', 'delete', 'lease', '-l', 'app.kubernetes.io/component=proxy-replica']);
    await host.applyCluster('gamma');
    await claimAvailable('gamma', 120_000);
    const claimed = () => host.get('gamma').then((c) => available(c!));
    const lapsed = /set AgentAvailable Unknown/;
    // a replica a minute behind the API server, renewing every second: its renewals look a minute old
    await writeLease('slow', 60_000);
    let renewing = true;
    const renewals = (async () => {
      for (let i = 0; renewing && i < 120; i++) {
        await new Promise((r) => setTimeout(r, 1000));
        await writeLease('slow', 60_000);
      }
    })();
    const behind = await host.tower(['clusters']);
    renewing = false;
    await renewals;
    assert.equal(behind.code, 0, behind.stderr);
    assert.match(behind.stderr, /every tower replica's Lease looks lapsed: watching them for 4s to be sure/);
    assert.doesNotMatch(behind.stderr, lapsed);
    assert.match(behind.stdout, /^gamma\s+1\s/m);
    assert.ok(await claimed());
    // the same Lease, no longer renewed: the replica is gone
    const gone = await host.tower(['clusters']);
    assert.match(gone.stderr, /^set AgentAvailable Unknown on Cluster gamma: /m, gone.stderr);
    assert.equal(await claimed(), false);
    await host.must(['-n', 'kubesphere-system', 'delete', 'lease', 'tower-proxy-slow']);
    // a Lease with tower's label whose holder is not the replica its name says: not a replica's
    await claimAvailable('gamma', 120_000);
    await writeLease('other', 600_000, 'tower-proxy-mismatch');
    const foreign = await host.tower(['clusters']);
    assert.doesNotMatch(foreign.stderr, lapsed);
    assert.ok(await claimed());
    await host.must(['-n', 'kubesphere-system', 'delete', 'lease', 'tower-proxy-mismatch']);
    // a replica's Lease that lapsed ten minutes ago, and a condition written since (by a proxy that is not tower)
    await writeLease('dead', 600_000);
    await claimAvailable('gamma', 5_000);
    const since = await host.tower(['clusters']);
    assert.doesNotMatch(since.stderr, lapsed);
    assert.ok(await claimed());
    await host.must(['-n', 'kubesphere-system', 'delete', 'lease', 'tower-proxy-dead']);
  },
);

test(
  "a replica whose clock runs 30 s behind writes its Lease on the API server's clock: tower clusters finds it " +
    'serving at once and writes nothing',
  async () => {
    // 30 s: far beyond the 4 s Lease, and the host's certificates (made as its file began) are valid to it
    const behind = clockOff('-30s');
    await host.must(['-n', 'kubesphere-system', 'delete', 'lease', '-l', 'app.kubernetes.io/component=proxy-replica']);
    const { proxy, agent } = await serving('delta', behind);
    const id = /serverId=(\S+)/.exec(proxy.output)![1]!;
    const lease = await waitUntil('a renewal on the API server clock', async () => {
      const json = await host.must(['-n', 'kubesphere-system', 'get', 'lease', `tower-proxy-${id}`, '-o', 'json']);
      const renewed = Date.parse(JSON.parse(json).spec.renewTime);
      return Math.abs(Date.now() - renewed) < 10_000 ? renewed : undefined;
    });
    assert.ok(lease);
    const listed = await host.tower(['clusters']);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /^delta\s+1\s/m);
    assert.doesNotMatch(listed.stderr, /looks lapsed|set AgentAvailable/);
    assert.ok(available((await host.get('delta'))!));
    await agent.stop();
    await proxy.stop('SIGTERM');
  },
);

test(
  "a replica whose clock runs 60 s ahead keeps its peer: it reads the peer's renewals through the API server's " +
    'clock, and deletes no Lease as long gone',
  async () => {
    await host.must(['-n', 'kubesphere-system', 'delete', 'lease', '-l', 'app.kubernetes.io/component=proxy-replica']);
    const steady = await host.startProxy([...REPLICA_LEASE, '--server-id', 'steady']);
    const ahead = await host.startProxy([...REPLICA_LEASE, '--server-id', 'ahead'], { env: clockOff('+60s') });
    // announced (ids) or changed (id@address), once it counts the other as live
    await ahead.waitFor(/replicas=ahead(@\S+)?,steady\b/, 20_000);
    await steady.waitFor(/replicas=steady(@\S+)?,ahead\b/, 20_000);
    assert.doesNotMatch(ahead.output, /deleted the Lease of a replica that is gone/);
    assert.doesNotMatch(steady.output, /deleted the Lease of a replica that is gone/);
    await Promise.all([ahead.stop('SIGTERM'), steady.stop('SIGTERM')]);
  },
);
