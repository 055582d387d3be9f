import type { V1ConfigMap, V1Secret } from '@kubernetes/client-node';
import { StoreError, TowerError } from '../errors.ts';
import { apiError, apiStatus, HostCluster, orUndefined } from '../kube/api.ts';
import { NAMESPACE, type KubeCluster } from '../kube/resource.ts';
import { ClusterController } from '../kube/controller.ts';
import { LeaderElector, type LeaseTimes } from '../kube/leader.ts';
import type { Logger } from '../observe/log.ts';
import { assertClusterName } from './names.ts';
import type {
  Cluster,
  ClusterEvent,
  ClusterStore,
  Closer,
  KeyMaterial,
  KeyMaterialKind,
  ProxyRecord,
  ReconcileContext,
  ReplicaTimes,
} from './types.ts';
import { LeaseReplicas } from '../kube/replicas.ts';
import type { Replica, Replicas } from '../proxy/replicas.ts';

const SECRETS: Record<KeyMaterialKind, string> = { ca: 'tower-ca', 'ssh-host-key': 'tower-ssh-host-key' };
const PROXY_RECORD = 'tower-proxy';
const LEASE = 'tower';

export interface KubernetesStoreOptions {
  /** host kubeconfig path; undefined: in-cluster service account */
  kubeconfig: string | undefined;
  log: Logger;
  /** when set, only the holder of the Lease writes the Clusters; claim() waits for it */
  leaderElection?: { times: LeaseTimes };
}

/**
 * Kubernetes mode: KubeSphere's Cluster resources are the registry; tower's CA, host key and
 * proxy record live in kubesphere-system (Secrets tower-ca and tower-ssh-host-key, ConfigMap
 * tower-proxy). The proxy that holds the store runs the ClusterController through reconcile().
 */
export class KubernetesStore implements ClusterStore {
  readonly kind = 'kubernetes';
  readonly host: HostCluster;
  readonly location: string;
  #opts: KubernetesStoreOptions;
  #controller: ClusterController | undefined;
  #listeners = new Set<(ev: ClusterEvent) => void>();
  #leading: boolean;

  constructor(opts: KubernetesStoreOptions) {
    this.#opts = opts;
    this.host = new HostCluster(opts.kubeconfig);
    this.location = `clusters.cluster.kubesphere.io at ${this.host.server}`;
    this.#leading = !opts.leaderElection;
  }

  get leading(): boolean {
    return this.#leading;
  }

  replicas(self: Replica, times: ReplicaTimes, log: Logger): Replicas {
    return new LeaseReplicas(this.host, self, times, log);
  }

  /** The Cluster as it is in the API (undefined when absent). */
  async resource(name: string): Promise<KubeCluster | undefined> {
    assertClusterName(name);
    try {
      return await this.host.getCluster(name);
    } catch (err) {
      throw apiError(`reading Cluster "${name}"`, this.host.server, err);
    }
  }

  async get(name: string): Promise<Cluster | undefined> {
    const c = await this.resource(name);
    return c ? fromResource(c) : undefined;
  }

  async list(): Promise<Cluster[]> {
    if (this.#controller) return [...this.#controller.served.values()];
    try {
      return (await this.host.listClusters()).items.map(fromResource).filter((c): c is Cluster => c !== undefined);
    } catch (err) {
      throw apiError('listing Clusters', this.host.server, err);
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
      const made = await this.host.createCluster(body);
      return fromResource(made) ?? { name, token, createdAt: '', revision: made.metadata.resourceVersion ?? '' };
    } catch (err) {
      if (apiStatus(err) === 409)
        throw new StoreError('EEXIST', `cluster "${name}" already exists in ${this.location}`);
      throw apiError(`creating Cluster "${name}"`, this.host.server, err);
    }
  }

  async update(cluster: Cluster): Promise<Cluster> {
    const c = await this.resource(cluster.name);
    if (!c)
      throw new StoreError(
        'ENOTFOUND',
        `cluster "${cluster.name}" not found in ${this.location} (create it with: tower token ${cluster.name} --kubeconfig …)`,
      );
    if (c.metadata.resourceVersion !== cluster.revision) {
      throw new StoreError('ECONFLICT', `cluster "${cluster.name}" changed while it was being updated; retry`);
    }
    c.spec ??= {};
    (c.spec.connection ??= {}).token = cluster.token;
    try {
      return fromResource(await this.host.replaceCluster(c)) ?? cluster;
    } catch (err) {
      if (apiStatus(err) === 409)
        throw new StoreError('ECONFLICT', `cluster "${cluster.name}" changed while it was being updated; retry`);
      throw apiError(`updating Cluster "${cluster.name}"`, this.host.server, err);
    }
  }

  /** The controller derives the conditions from the live agents: a change is a reason to reconcile. */
  async writeStatus(name: string): Promise<void> {
    this.#controller?.enqueue(name);
  }

  watch(onEvent: (event: ClusterEvent) => void): Closer {
    if (!this.#controller)
      throw new TowerError('EKUBE', 'the Kubernetes store is watched by the proxy after reconcile()');
    for (const cluster of this.#controller.served.values()) onEvent({ type: 'added', cluster });
    this.#listeners.add(onEvent);
    // the proxy stops watching when it stops serving: reconciling stops with it, and the conditions
    // stay as they are for the next leader (agents come back to it within seconds)
    return {
      close: () => {
        this.#listeners.delete(onEvent);
        this.#controller?.stop();
      },
    };
  }

  async reconcile(ctx: ReconcileContext): Promise<void> {
    this.#controller = new ClusterController(
      this.host,
      { ...ctx, log: this.#opts.log },
      (ev) => {
        for (const l of this.#listeners) l(ev);
      },
      this.#leading,
    );
    await this.#controller.start();
  }

  async readProxyRecord(): Promise<ProxyRecord | undefined> {
    const cm = await orUndefined(
      this.host.core.readNamespacedConfigMap({ name: PROXY_RECORD, namespace: NAMESPACE }),
    ).catch(() => undefined);
    const d = cm?.data;
    if (!d?.agentUrl || !d.gatewayUrl) return undefined;
    return { agentUrl: d.agentUrl, gatewayUrl: d.gatewayUrl, hostKeyFingerprint: d.hostKeyFingerprint ?? '' };
  }

  async writeProxyRecord(record: ProxyRecord): Promise<void> {
    const data = {
      agentUrl: record.agentUrl,
      gatewayUrl: record.gatewayUrl,
      hostKeyFingerprint: record.hostKeyFingerprint,
    };
    const body: V1ConfigMap = {
      metadata: { name: PROXY_RECORD, namespace: NAMESPACE, labels: { 'app.kubernetes.io/name': 'tower' } },
      data,
    };
    try {
      const cm = await orUndefined(
        this.host.core.readNamespacedConfigMap({ name: PROXY_RECORD, namespace: NAMESPACE }),
      );
      if (!cm) await this.host.core.createNamespacedConfigMap({ namespace: NAMESPACE, body });
      else
        await this.host.core.replaceNamespacedConfigMap({
          name: PROXY_RECORD,
          namespace: NAMESPACE,
          body: { ...cm, data },
        });
    } catch (err) {
      this.#opts.log.warn("cannot record the proxy's addresses (tower token prints defaults)", {
        configMap: `${NAMESPACE}/${PROXY_RECORD}`,
        err: apiError('writing', this.host.server, err).message,
      });
    }
  }

  async claim(): Promise<Closer> {
    await this.#checkNamespace();
    const le = this.#opts.leaderElection;
    if (!le) return { close: () => undefined };
    const elector = new LeaderElector(this.host, LEASE, NAMESPACE, le.times, this.#opts.log);
    // a replica that loses the lease keeps serving and campaigns again; its controller only reads meanwhile
    const campaign = async (): Promise<void> => {
      await elector.acquire((why) => {
        this.#leading = false;
        this.#controller?.follow();
        this.#opts.log.error('leader election lost; this replica serves on and campaigns again', { why });
        void campaign();
      });
      if (!elector.leading) return;
      this.#leading = true;
      this.#controller?.lead();
    };
    await campaign();
    return {
      close: async () => {
        this.#leading = false;
        this.#controller?.follow();
        await elector.release();
      },
    };
  }

  /** Secrets tower-ca / tower-ssh-host-key: created once; a creation race is settled by the API (409). */
  async loadOrCreateKeyMaterial(kind: KeyMaterialKind, create: () => Promise<KeyMaterial>): Promise<KeyMaterial> {
    const name = SECRETS[kind];
    const read = async () => {
      const s = await orUndefined(this.host.core.readNamespacedSecret({ name, namespace: NAMESPACE }));
      if (!s) return undefined;
      return Object.fromEntries(
        Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]),
      );
    };
    try {
      const existing = await read();
      if (existing) return existing;
      const made = await create();
      const body: V1Secret = {
        metadata: { name, namespace: NAMESPACE, labels: { 'app.kubernetes.io/name': 'tower' } },
        type: 'Opaque',
        data: Object.fromEntries(Object.entries(made).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
      };
      try {
        await this.host.core.createNamespacedSecret({ namespace: NAMESPACE, body });
        return made;
      } catch (err) {
        if (apiStatus(err) !== 409) throw err;
        return (await read())!;
      }
    } catch (err) {
      if (err instanceof TowerError) throw err;
      if (apiStatus(err) === 404) await this.#checkNamespace();
      throw apiError(`reading or creating Secret ${NAMESPACE}/${name}`, this.host.server, err);
    }
  }

  async #checkNamespace(): Promise<void> {
    try {
      await this.host.core.readNamespace({ name: NAMESPACE });
    } catch (err) {
      if (apiStatus(err) === 404)
        throw new TowerError(
          'EKUBE',
          `namespace ${NAMESPACE} does not exist in the host cluster at ${this.host.server} (create it: kubectl create namespace ${NAMESPACE}, or apply \`tower install proxy\`)`,
        );
      if (apiStatus(err) === 403) return; // allowed to work in it without reading it
      throw apiError(`reading namespace ${NAMESPACE}`, this.host.server, err);
    }
  }

  close(): void {
    this.#controller?.stop();
    this.#listeners.clear();
  }
}

/** The store's view of a Cluster: one tower acts on, with a token. */
function fromResource(c: KubeCluster): Cluster | undefined {
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
