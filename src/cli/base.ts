import { homedir } from 'node:os';
import { resolve } from 'node:path';
import { Command, Option } from 'clipanion';
import { ConfigError, TowerError } from '../errors.ts';
import { inCluster } from '../kube/resource.ts';
import { describeSources, loadConfig, type Loaded, type RawFlags, type Specs } from '../config/loader.ts';
import { log } from '../observe/log.ts';
import { FileStore } from '../store/file.ts';
import type { KubernetesStore, KubernetesStoreOptions } from '../store/kubernetes.ts';
import type { ClusterStore } from '../store/types.ts';

export interface StoreChoice {
  store?: string;
  kubeconfig?: string;
  dataDir?: string;
}

/** Options every subcommand shares, and the one way they load and fail. */
export abstract class TowerCommand extends Command {
  verbosity = Option.String('-v,--v', { description: 'Log verbosity: 0 (default) to 10; 2 prints where every option came from' });
  logFormat = Option.String('--log-format', { description: 'Log format: text (default) or json' });
  configFile = Option.String('--config', { description: 'YAML file of options (keys are flag names; a section per subcommand overrides); env TOWER_CONFIG' });

  abstract readonly command: string;
  abstract run(): Promise<number | void>;

  async execute(): Promise<number> {
    try {
      return (await this.run()) ?? 0;
    } catch (err) {
      if (err instanceof TowerError) {
        process.stderr.write(`tower ${this.command}: ${err.message}\n`);
      } else {
        process.stderr.write(`tower ${this.command}: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
      }
      return 1;
    }
  }

  /** Merges flags, TOWER_* environment, the config file and defaults; configures logging. */
  load<S extends Specs>(specs: S, flags: RawFlags, secrets: (keyof S)[] = []): Loaded<S>['values'] {
    const loaded = loadConfig(specs, {
      command: this.command,
      flags: { ...flags, v: this.verbosity, logFormat: this.logFormat },
      configFile: this.configFile ?? (process.env.TOWER_CONFIG || undefined),
    });
    const values = loaded.values as Record<string, unknown>;
    log.configure(values.v as number, values.logFormat as 'text' | 'json');
    if (log.enabled(2)) for (const line of describeSources(specs, loaded, secrets)) log.debug(2, `option ${line}`);
    return loaded.values;
  }

  /**
   * The file store, or the Kubernetes one: chosen by --store, else Kubernetes when a host
   * kubeconfig is given or the process runs in a pod with a service account.
   */
  async openStore(o: StoreChoice, k8s: Omit<KubernetesStoreOptions, 'kubeconfig' | 'log'> = {}): Promise<ClusterStore> {
    const kind = o.store ?? (o.kubeconfig || inCluster() ? 'kubernetes' : 'file');
    if (kind === 'kubernetes') {
      if (!o.kubeconfig && !inCluster()) throw new ConfigError('--store kubernetes needs the host cluster: give --kubeconfig <path>, or run in a pod with a service account');
      // loaded on demand: the Kubernetes client is most of the bundle, and the file mode and the agent never need it
      const { KubernetesStore } = await import('../store/kubernetes.ts');
      return new KubernetesStore({ kubeconfig: o.kubeconfig, log, ...k8s });
    }
    if (o.kubeconfig) throw new ConfigError('--kubeconfig names a host cluster, which the file store does not use: drop --store file, or drop --kubeconfig');
    const dir = o.dataDir ? resolve(o.dataDir.replace(/^~(?=$|\/)/, homedir())) : resolve(homedir(), '.tower');
    return new FileStore(dir);
  }
}

export function isKubernetesStore(store: ClusterStore): store is KubernetesStore {
  return store.kind === 'kubernetes';
}
