import { assertClusterName } from '../../config/names.ts';
import { ConflictError, NotFoundError, StoreError, TowerError } from '../../errors.ts';
import type { Cluster, ClusterEvent, ClusterRecords, Closer } from '../mode.ts';
import { apiError, apiStatus, type HostCluster } from './api.ts';
import type { ClusterController } from './controller.ts';
import type { KubeCluster } from './resource.ts';

/**
 * KubeSphere's Cluster resources as tower's registry. Once the proxy reconciles, the clusters it
 * lists and watches are the ones its ClusterController serves (with their ports).
 */
export class KubernetesClusters implements ClusterRecords {
  readonly location: string;
  #host: HostCluster;
  #controller: () => ClusterController | undefined;
  #listeners = new Set<(ev: ClusterEvent) => void>();

  /** `controller`: the mode's, once the proxy has started it */
  constructor(host: HostCluster, controller: () => ClusterController | undefined) {
    this.#host = host;
    this.#controller = controller;
    this.location = `clusters.cluster.kubesphere.io at ${host.server}`;
  }

  /** The Cluster as it is in the API (undefined when absent). */
  async resource(name: string): Promise<KubeCluster | undefined> {
    assertClusterName(name);
    try {
      return await this.#host.getCluster(name);
    } catch (err) {
      throw apiError(`reading Cluster "${name}"`, this.#host.server, err);
    }
  }

  async get(name: string): Promise<Cluster | undefined> {
    const c = await this.resource(name);
    return c ? fromResource(c) : undefined;
  }

  async list(): Promise<Cluster[]> {
    const controller = this.#controller();
    if (controller) return [...controller.served.values()];
    try {
      return (await this.#host.listClusters()).items.map(fromResource).filter((c): c is Cluster => c !== undefined);
    } catch (err) {
      throw apiError('listing Clusters', this.#host.server, err);
    }
  }

  /** Creates a Cluster of type proxy that joins the federation; an empty token is for the proxy to fill. */
  async create(name: string, token: string): Promise<Cluster> {
    assertClusterName(name);
    const body: KubeCluster = {
      apiVersion: 'cluster.kubesphere.io/v1alpha1',
      kind: 'Cluster',
      metadata: { name },
      spec: { joinFederation: true, enable: true, connection: { type: 'proxy', ...(token ? { token } : {}) } },
    };
    try {
      const made = await this.#host.createCluster(body);
      return fromResource(made) ?? { name, token, createdAt: '', revision: made.metadata.resourceVersion ?? '' };
    } catch (err) {
      if (apiStatus(err) === 409)
        throw new StoreError('EEXIST', `cluster "${name}" already exists in ${this.location}`);
      throw apiError(`creating Cluster "${name}"`, this.#host.server, err);
    }
  }

  async update(cluster: Cluster): Promise<Cluster> {
    const c = await this.resource(cluster.name);
    if (!c)
      throw new NotFoundError(
        `cluster "${cluster.name}" not found in ${this.location} ` +
          `(create it with: tower token ${cluster.name} --kubeconfig …)`,
      );
    const conflict = () => new ConflictError(`cluster "${cluster.name}" changed while it was being updated; retry`);
    if (c.metadata.resourceVersion !== cluster.revision) throw conflict();
    c.spec ??= {};
    (c.spec.connection ??= {}).token = cluster.token;
    try {
      return fromResource(await this.#host.replaceCluster(c)) ?? cluster;
    } catch (err) {
      if (apiStatus(err) === 409) throw conflict();
      throw apiError(`updating Cluster "${cluster.name}"`, this.#host.server, err);
    }
  }

  /** The Cluster resource is KubeSphere's: tower says how to delete it rather than deleting it. */
  async delete(name: string): Promise<void> {
    throw new StoreError(
      'EKUBE',
      `in Kubernetes mode cluster "${name}" is KubeSphere's Cluster resource, which tower does not delete: ` +
        `kubectl --kubeconfig <host> delete cluster.cluster.kubesphere.io ${name} ` +
        `(tower then stops serving it and removes its Service mc-${name})`,
    );
  }

  watch(onEvent: (event: ClusterEvent) => void): Closer {
    const controller = this.#controller();
    if (!controller) throw new TowerError('EKUBE', 'the Kubernetes store is watched by the proxy after reconcile()');
    for (const cluster of controller.served.values()) onEvent({ type: 'added', cluster });
    this.#listeners.add(onEvent);
    // the proxy stops watching when it stops serving: reconciling stops with it, and the conditions
    // stay as they are for the next leader (agents come back to it within seconds)
    return {
      close: () => {
        this.#listeners.delete(onEvent);
        this.#controller()?.stop();
      },
    };
  }

  /** Hands a change the controller made to the watchers. */
  deliver(ev: ClusterEvent): void {
    for (const l of this.#listeners) l(ev);
  }

  close(): void {
    this.#listeners.clear();
  }
}

/** The registry's view of a Cluster: one tower acts on, with a token. */
export function fromResource(c: KubeCluster): Cluster | undefined {
  const conn = c.spec?.connection;
  if (
    c.metadata.deletionTimestamp ||
    conn?.type !== 'proxy' ||
    c.spec?.joinFederation !== true ||
    typeof conn.token !== 'string' ||
    !conn.token
  )
    return undefined;
  return {
    name: c.metadata.name,
    token: conn.token,
    createdAt: String(c.metadata.creationTimestamp ?? ''),
    revision: c.metadata.resourceVersion ?? '',
  };
}
