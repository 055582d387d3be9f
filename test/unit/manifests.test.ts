// What `tower install proxy` emits for the Kubernetes version it is told or finds.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { kubeMinor } from '../../src/config/options.ts';
import { pdbApiVersionFor, proxyManifests } from '../../src/mode/kubernetes/manifests.ts';

test('Kubernetes versions as users and the API write them; anything else is not one', () => {
  const cases: [string, number][] = [
    ['1.20', 20],
    ['v1.20.2', 20],
    ['1.32.3', 32],
    ['v1.21.14-eks-1234', 21],
  ];
  for (const [text, minor] of cases) assert.equal(kubeMinor(text), minor, text);
  for (const text of ['', '1', '2.0', 'v1.', '1.x', 'latest', '1.20.2.1', '1.20 2']) {
    assert.equal(kubeMinor(text), undefined, JSON.stringify(text));
  }
});

test('the PodDisruptionBudget is policy/v1beta1 before Kubernetes 1.21, policy/v1 from then on', () => {
  assert.equal(pdbApiVersionFor(16), 'policy/v1beta1');
  assert.equal(pdbApiVersionFor(20), 'policy/v1beta1');
  assert.equal(pdbApiVersionFor(21), 'policy/v1');
  assert.equal(pdbApiVersionFor(32), 'policy/v1');
  const base = { image: 'tower:1', publishServiceAddress: 'tower.example', serviceType: 'ClusterIP' };
  const pdb = (replicas: number, pdbApiVersion: 'policy/v1' | 'policy/v1beta1') =>
    proxyManifests({ ...base, replicas, pdbApiVersion }).filter((o) => o.kind === 'PodDisruptionBudget');
  assert.deepEqual(
    pdb(2, 'policy/v1beta1').map((o) => o.apiVersion),
    ['policy/v1beta1'],
  );
  assert.deepEqual(pdb(1, 'policy/v1beta1'), [], 'one replica has no budget to keep');
});
