// A host kube-apiserver for the Kubernetes-mode workloads: the tests' KubeHost (KubeSphere's Cluster
// CRD and kubesphere-system), the apiserver built first when missing; closed at the end if not before.
import { join } from 'node:path';
import { KubeHost } from '../../test/support/kube.ts';
import { ROOT, run } from '../../test/support/tower.ts';
import type { Bench } from './context.ts';

/** building kube-apiserver from Debian's source takes a while, once */
const BUILD_TIMEOUT_MS = 60 * 60_000;

export async function startKubeHost(bench: Bench): Promise<KubeHost> {
  const built = await run('bash', [join(ROOT, 'scripts', 'test-cluster.sh'), 'build'], { timeoutMs: BUILD_TIMEOUT_MS });
  if (built.code !== 0) throw new Error(`cannot build the test kube-apiserver: ${built.stderr}`);
  return bench.adopt(await KubeHost.start());
}
