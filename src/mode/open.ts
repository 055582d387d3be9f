import { homedir } from 'node:os';
import { resolve } from 'node:path';
import { ConfigError } from '../errors.ts';
import type { Logger } from '../observe/log.ts';
import { FileMode } from './file/mode.ts';
import type { LeaseTimes } from './kubernetes/leader.ts';
import { inCluster } from './kubernetes/resource.ts';
import type { Mode } from './mode.ts';

/** The flags that pick the mode. */
export interface ModeChoice {
  store?: string;
  kubeconfig?: string;
  dataDir?: string;
}

export interface ModeOptions {
  log: Logger;
  /** `tower proxy --leader-elect`: only the holder of a Lease writes the Clusters (Kubernetes mode only) */
  leaderElection?: { times: LeaseTimes };
}

/**
 * The mode the flags pick, once for the whole command: --store, else Kubernetes when a host
 * kubeconfig is given or the process runs in a pod with a service account, else the file mode.
 */
export async function openMode(choice: ModeChoice, opts: ModeOptions): Promise<Mode> {
  const kind = choice.store ?? (choice.kubeconfig || inCluster() ? 'kubernetes' : 'file');
  if (kind === 'kubernetes') {
    if (!choice.kubeconfig && !inCluster())
      throw new ConfigError(
        '--store kubernetes needs the host cluster: give --kubeconfig <path>, or run in a pod with a service account',
      );
    // loaded on demand: the Kubernetes client is most of the bundle, and the file mode and the agent never need it
    const { KubernetesMode } = await import('./kubernetes/mode.ts');
    return new KubernetesMode({ kubeconfig: choice.kubeconfig, ...opts });
  }
  if (choice.kubeconfig)
    throw new ConfigError(
      '--kubeconfig names a host cluster, which the file store does not use: drop --store file, or drop --kubeconfig',
    );
  const dir = choice.dataDir ? resolve(choice.dataDir.replace(/^~(?=$|\/)/, homedir())) : resolve(homedir(), '.tower');
  const mode = new FileMode(dir);
  if (opts.leaderElection) {
    mode.close();
    throw new ConfigError(
      '--leader-elect needs Kubernetes mode (--kubeconfig <host>): the file store allows one proxy per data dir',
    );
  }
  return mode;
}
