// Kubernetes mode on a plain host, before KubeSphere's Cluster CRD is applied: every command says so in one
// line with the fix, and the proxy says it once and waits longer each time, then serves once it is applied.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { CRD_FIXTURE } from './support/kube.ts';
import { pattern } from './support/pattern.ts';
import { kubectl } from './support/stack.ts';
import { freePort, removeDir, tempDir, tower, TowerProcess } from './support/tower.ts';

let host: MemberCluster;
let home: string;

before(async () => {
  host = await startMemberCluster();
  home = tempDir('no-crd');
  const ns = await kubectl(host.kubeconfig, ['create', 'namespace', 'kubesphere-system']);
  assert.equal(ns.code, 0, ns.stderr);
});

after(async () => {
  await host?.stop();
  removeDir(home);
});

const FIX = pattern(
  /apply KubeSphere's Cluster CRD \(clusters\.cluster\.kubesphere\.io\)/,
  /.*tower install crd --with-namespace --kubeconfig/,
);

test('commands without the Cluster CRD: one line each, naming the CRD and how to apply it, no stack', async () => {
  for (const args of [
    ['clusters'],
    ['token', 'alpha', '--timeout', '5s'],
    ['kubeconfig', 'alpha', '--timeout', '5s'],
  ]) {
    const r = await tower([...args, '--kubeconfig', host.kubeconfig], { TOWER_HOME: home });
    assert.equal(r.code, 1, `tower ${args[0]}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, `tower ${args[0]} said more than one line:\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /^\s+at /m);
    assert.match(r.stderr, FIX, `tower ${args[0]}`);
  }
});

test('the proxy without the Cluster CRD says so once while retrying, and serves once the CRD is applied', async () => {
  const proxy = new TowerProcess(
    'proxy',
    [
      'proxy',
      '--kubeconfig',
      host.kubeconfig,
      '--host',
      '127.0.0.1',
      '--port',
      String(await freePort()),
      '--gateway-port',
      String(await freePort()),
      '-v',
      '1',
    ],
    { TOWER_HOME: home },
  );
  try {
    await proxy.waitFor(/watch of Clusters failed; restarting .*does not serve Clusters .*404 page not found/, 30_000);
    // -v 1 shows every retry; the warning is not repeated meanwhile
    await proxy.waitFor(/failed again[\s\S]*failed again/, 60_000);
    const warnings = proxy.output.match(/WARN .*watch of Clusters failed/g) ?? [];
    assert.equal(warnings.length, 1, proxy.output);
    assert.match(proxy.output, FIX);
    const waits = [...proxy.output.matchAll(/failed again; restarting .*inMs=(\d+)/g)].map((m) => Number(m[1]));
    assert.ok(waits.length >= 2 && waits[1]! > waits[0]!, `the waits do not grow: ${waits.join(', ')}`);

    const crd = await kubectl(host.kubeconfig, ['apply', '-f', CRD_FIXTURE]);
    assert.equal(crd.code, 0, crd.stderr);
    await proxy.waitFor(/watch of Clusters resumed/, 90_000);
    await proxy.waitFor(/proxy serving/, 30_000);
  } finally {
    await proxy.stop();
  }
});
