import { homedir } from 'node:os';
import { resolve } from 'node:path';
import { Command, Option } from 'clipanion';
import { ConfigError, TowerError } from '../errors.ts';
import { inCluster } from '../kube/resource.ts';
import { assertClusterName } from '../store/names.ts';
import { describeSources, flagName, loadConfig, type Loaded, type RawFlags, type Specs } from '../config/loader.ts';
import { log } from '../observe/log.ts';
import { FileStore } from '../store/file.ts';
import type { KubernetesStore, KubernetesStoreOptions } from '../store/kubernetes.ts';
import type { ClusterStore } from '../store/types.ts';

export interface StoreChoice {
  store?: string;
  kubeconfig?: string;
  dataDir?: string;
}

/** What `--help` and the README show of a command besides its flags. */
export interface CommandDoc {
  /** e.g. "token NAME" */
  usage: string;
  summary: string;
  details?: string;
  examples?: [string, string][];
}

/**
 * The subcommands' base: the flags come from the command's option table (`static options`), so
 * that parsing, `--help`, the config loader and the README name the same flags; and one way to
 * load options and to fail.
 */
export abstract class TowerCommand extends Command {
  static options: Specs = {};
  static doc: CommandDoc;

  abstract readonly command: string;
  abstract run(): Promise<number | void>;

  constructor() {
    super();
    const specs = (this.constructor as typeof TowerCommand).options;
    const self = this as unknown as Record<string, unknown>;
    for (const [key, spec] of Object.entries(specs)) {
      const names = [`--${flagName(key)}`, ...(spec.short ? [`-${spec.short}`] : [])].join(',');
      self[key] = spec.kind === 'bool' ? Option.Boolean(names) : Option.String(names);
    }
  }

  /** the raw values clipanion parsed, by option key */
  get flags(): RawFlags {
    const specs = (this.constructor as typeof TowerCommand).options;
    const self = this as unknown as Record<string, string | boolean | undefined>;
    return Object.fromEntries(Object.keys(specs).map((k) => [k, self[k]]));
  }

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

  /** The NAME argument, checked: a missing or invalid one is a one-line error with an example. */
  clusterName(name: string | undefined): string {
    if (name === undefined)
      throw new ConfigError(
        `missing NAME, the cluster's name (e.g. tower ${this.command} alpha; see: tower ${this.command} --help)`,
      );
    return assertClusterName(name);
  }

  /** Merges flags, TOWER_* environment, the config file and defaults; configures logging. */
  load<S extends Specs>(specs: S, secrets: (keyof S)[] = []): Loaded<S>['values'] {
    const flags = this.flags;
    const loaded = loadConfig(specs, {
      command: this.command,
      flags,
      configFile: (flags.config as string | undefined) ?? (process.env.TOWER_CONFIG || undefined),
    });
    const values = loaded.values as Record<string, unknown>;
    log.configure(values.v as number, values.logFormat as 'text' | 'json');
    if (log.enabled(2)) for (const line of describeSources(specs, loaded, secrets)) log.debug(2, `option ${line}`);
    return loaded.values;
  }

  /** Runs `fn` on the store that `o` selects, closing it after. */
  async withStore<T>(o: StoreChoice, fn: (store: ClusterStore) => Promise<T>): Promise<T> {
    const store = await this.openStore(o);
    try {
      return await fn(store);
    } finally {
      store.close();
    }
  }

  /**
   * The file store, or the Kubernetes one: chosen by --store, else Kubernetes when a host
   * kubeconfig is given or the process runs in a pod with a service account.
   */
  async openStore(o: StoreChoice, k8s: Omit<KubernetesStoreOptions, 'kubeconfig' | 'log'> = {}): Promise<ClusterStore> {
    const kind = o.store ?? (o.kubeconfig || inCluster() ? 'kubernetes' : 'file');
    if (kind === 'kubernetes') {
      if (!o.kubeconfig && !inCluster())
        throw new ConfigError(
          '--store kubernetes needs the host cluster: give --kubeconfig <path>, or run in a pod with a service account',
        );
      // loaded on demand: the Kubernetes client is most of the bundle, and the file mode and the agent never need it
      const { KubernetesStore } = await import('../store/kubernetes.ts');
      return new KubernetesStore({ kubeconfig: o.kubeconfig, log, ...k8s });
    }
    if (o.kubeconfig)
      throw new ConfigError(
        '--kubeconfig names a host cluster, which the file store does not use: drop --store file, or drop --kubeconfig',
      );
    const dir = o.dataDir ? resolve(o.dataDir.replace(/^~(?=$|\/)/, homedir())) : resolve(homedir(), '.tower');
    return new FileStore(dir);
  }
}

export function isKubernetesStore(store: ClusterStore): store is KubernetesStore {
  return store.kind === 'kubernetes';
}
