/**
 * The clusters this proxy knows, kept from the mode's watch: which names route, and which tokens
 * admit agents. A rotated token or a removed cluster closes the sessions that no longer qualify;
 * a record that cannot be used fails closed.
 */
import type { Logger } from '../observe/log.ts';
import type { Closer, Cluster, ClusterRecords } from '../mode/mode.ts';
import { tokensEqual } from './agent-admission.ts';
import type { ProxyMetrics } from './metrics.ts';
import type { SessionRegistry } from './registry.ts';

export interface KnownClustersOptions {
  records: ClusterRecords;
  registry: SessionRegistry;
  metrics: ProxyMetrics;
  /** a cluster was added, changed or (undefined) removed: what it serves besides the gateway follows */
  onChange: (name: string, cluster: Cluster | undefined) => void;
  log: Logger;
}

export class KnownClusters {
  #opts: KnownClustersOptions;
  #clusters = new Map<string, Cluster>();
  #watch: Closer | undefined;

  constructor(opts: KnownClustersOptions) {
    this.#opts = opts;
  }

  /** loaded and watched */
  get ready(): boolean {
    return this.#watch !== undefined;
  }
  get size(): number {
    return this.#clusters.size;
  }
  has(name: string): boolean {
    return this.#clusters.has(name);
  }
  get(name: string): Cluster | undefined {
    return this.#clusters.get(name);
  }
  names(): IterableIterator<string> {
    return this.#clusters.keys();
  }

  /** Loads the clusters and follows their changes. */
  async start(): Promise<void> {
    const { records, registry, log } = this.#opts;
    for (const c of await records.list()) {
      this.#clusters.set(c.name, c);
      if (c.problem) this.#reportUnusable(c);
    }
    this.#watch = records.watch((ev) => {
      if (ev.type === 'deleted') {
        this.#clusters.delete(ev.name);
        this.#opts.onChange(ev.name, undefined);
        const n = registry.close(ev.name);
        void this.#opts.metrics.forget(ev.name);
        log.info('cluster removed from the store', { cluster: ev.name, sessionsClosed: n });
        return;
      }
      const before = this.#clusters.get(ev.cluster.name);
      this.#clusters.set(ev.cluster.name, ev.cluster);
      this.#opts.onChange(ev.cluster.name, ev.cluster);
      if (ev.cluster.problem) {
        // fail closed: the token this proxy knew is no longer trusted
        if (before?.problem !== ev.cluster.problem) this.#reportUnusable(ev.cluster, registry.close(ev.cluster.name));
        return;
      }
      if (!before) {
        log.info('cluster registered', { cluster: ev.cluster.name });
        return;
      }
      if (before.problem) log.info('cluster record usable again', { cluster: ev.cluster.name });
      if (before.token !== ev.cluster.token) {
        const n = registry.close(ev.cluster.name, (s) => !tokensEqual(s.config.token, ev.cluster.token));
        log.info('cluster token rotated', { cluster: ev.cluster.name, sessionsClosed: n });
      }
    });
  }

  close(): void {
    this.#watch?.close();
  }

  #reportUnusable(cluster: Cluster, sessionsClosed = 0): void {
    this.#opts.log.error('cluster record unusable: its agents are refused', {
      cluster: cluster.name,
      why: cluster.problem,
      sessionsClosed,
      fix: `restore the record, or write a new token with: tower token ${cluster.name} --rotate`,
    });
  }
}
