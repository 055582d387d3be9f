/**
 * The host cluster's API, as tower uses it in Kubernetes mode: KubeSphere's Cluster resource, the
 * Services, Secrets and ConfigMap in kubesphere-system, and the Lease of leader election.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  ApiextensionsV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  VersionApi,
  makeInformer,
  type Cluster,
  type Informer,
  type KubernetesObject,
  type ObjectCache,
} from '@kubernetes/client-node';
import { Agent as UndiciAgent, type Dispatcher } from 'undici';
import type { AgentOptions } from 'node:https';
import { ConfigError, TowerError } from '../../errors.ts';
import { apiError, apiMessage, apiStatus, notServed, orUndefined } from './api-errors.ts';
import { sameJson } from './desired.ts';
import { GROUP, NAMESPACE, PLURAL, VERSION, type KubeCluster } from './resource.ts';
import type { Logger } from '../../observe/log.ts';

/** The clients tower needs, from a kubeconfig file or the pod's service account. */
export class HostCluster {
  readonly kc = new KubeConfig();
  readonly custom: CustomObjectsApi;
  readonly core: CoreV1Api;
  readonly coordination: CoordinationV1Api;
  readonly server: string;

  constructor(kubeconfig: string | undefined) {
    if (kubeconfig) {
      if (!existsSync(kubeconfig))
        throw new ConfigError(
          `host kubeconfig ${kubeconfig} does not exist (give --kubeconfig the path of a kubeconfig for the host ` +
            `cluster)`,
        );
      try {
        this.kc.loadFromFile(kubeconfig);
      } catch (err) {
        throw new ConfigError(`cannot read host kubeconfig ${kubeconfig}: ${(err as Error).message}`);
      }
    } else {
      this.kc.loadFromCluster();
    }
    reuseConnections(this.kc);
    const cluster = this.kc.getCurrentCluster();
    if (!cluster?.server)
      throw new ConfigError(`host kubeconfig ${kubeconfig ?? '(in-cluster)'} has no current cluster with a server`);
    this.server = cluster.server;
    this.custom = this.kc.makeApiClient(CustomObjectsApi);
    this.core = this.kc.makeApiClient(CoreV1Api);
    this.coordination = this.kc.makeApiClient(CoordinationV1Api);
  }

  getCluster(name: string): Promise<KubeCluster | undefined> {
    return orUndefined(
      this.custom.getClusterCustomObject({
        group: GROUP,
        version: VERSION,
        plural: PLURAL,
        name,
      }) as Promise<KubeCluster>,
    );
  }

  async listClusters(): Promise<{ items: KubeCluster[]; metadata?: { resourceVersion?: string } }> {
    return (await this.custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural: PLURAL })) as {
      items: KubeCluster[];
    };
  }

  createCluster(body: KubeCluster): Promise<KubeCluster> {
    return this.custom.createClusterCustomObject({
      group: GROUP,
      version: VERSION,
      plural: PLURAL,
      body,
    }) as Promise<KubeCluster>;
  }

  /** A whole-object update (resourceVersion checked): with no status subresource it writes status too. */
  replaceCluster(body: KubeCluster): Promise<KubeCluster> {
    return this.custom.replaceClusterCustomObject({
      group: GROUP,
      version: VERSION,
      plural: PLURAL,
      name: body.metadata.name,
      body,
    }) as Promise<KubeCluster>;
  }

  /**
   * Writes the whole Cluster, status too (resourceVersion checked): KubeSphere's CRD has no status
   * subresource, and where one has, the status goes in a second update.
   */
  async updateCluster(body: KubeCluster): Promise<KubeCluster> {
    const written = await this.replaceCluster(body);
    if (sameJson(written.status ?? {}, body.status ?? {})) return written;
    return this.replaceClusterStatus({ ...written, status: body.status });
  }

  replaceClusterStatus(body: KubeCluster): Promise<KubeCluster> {
    return this.custom.replaceClusterCustomObjectStatus({
      group: GROUP,
      version: VERSION,
      plural: PLURAL,
      name: body.metadata.name,
      body,
    }) as Promise<KubeCluster>;
  }

  /** Fails, saying how to create it, when the namespace tower works in does not exist. */
  async requireNamespace(): Promise<void> {
    try {
      await this.core.readNamespace({ name: NAMESPACE });
    } catch (err) {
      if (apiStatus(err) === 404)
        throw new TowerError(
          'EKUBE',
          `namespace ${NAMESPACE} does not exist in the host cluster at ${this.server} ` +
            `(create it: kubectl create namespace ${NAMESPACE}, or apply \`tower install proxy --with-namespace\`)`,
        );
      if (apiStatus(err) === 403) return; // allowed to work in it without reading it
      throw apiError(`reading namespace ${NAMESPACE}`, this.server, err);
    }
  }

  /** The Cluster CRD's annotations when the cluster has one, else undefined. */
  async clusterCrdAnnotations(): Promise<Record<string, string> | undefined> {
    try {
      const crd = await orUndefined(
        this.kc.makeApiClient(ApiextensionsV1Api).readCustomResourceDefinition({ name: `${PLURAL}.${GROUP}` }),
      );
      return crd && (crd.metadata?.annotations ?? {});
    } catch (err) {
      throw apiError('reading the Cluster CRD', this.server, err);
    }
  }

  /** The cluster's Kubernetes minor version (1.<minor>), as /version says; undefined when it says none. */
  async minorVersion(): Promise<number | undefined> {
    try {
      const v = await this.kc.makeApiClient(VersionApi).getCode();
      const m = /^(\d+)/.exec(v.minor);
      return v.major === '1' && m ? Number(m[1]) : undefined;
    } catch (err) {
      throw apiError('asking its version', this.server, err);
    }
  }

  /** An informer that restarts itself (client-node's stops on any error but 410). */
  watch<T extends KubernetesObject>(
    what: string,
    path: string,
    list: () => Promise<{ items: T[] }>,
    log: Logger,
    missingHint?: string,
  ): Watcher<T> {
    return new Watcher<T>(this.kc, what, path, list, log, missingHint);
  }
}

/** an API call that has not answered by then fails (undici's default is 5 minutes, which would stall reconciling) */
const API_HEADERS_TIMEOUT_MS = 30_000;

/**
 * client-node 2.0 builds a new undici Agent, i.e. a new TLS connection, for every API call (and
 * leaves it to idle out). One per distinct TLS identity is kept instead, with a deadline for the
 * answer's headers: the bearer token of a service account travels in a header, so its rotation is
 * unaffected. Proxied connections keep client-node's own dispatcher.
 */
function reuseConnections(kc: KubeConfig): void {
  type Create = (cluster: Cluster | null, agentOptions: AgentOptions) => Dispatcher | undefined;
  const target = kc as unknown as { createDispatcher: Create };
  const create = target.createDispatcher.bind(kc);
  const cache = new Map<string, Dispatcher | undefined>();
  target.createDispatcher = (cluster, agentOptions) => {
    const h = createHash('sha256').update(JSON.stringify(cluster ?? null));
    const o = agentOptions as Record<string, unknown>;
    for (const k of ['ca', 'cert', 'key', 'pfx', 'passphrase', 'rejectUnauthorized', 'servername'])
      h.update(`\0${k}\0`).update(String(o[k] ?? ''));
    const key = h.digest('hex');
    if (!cache.has(key)) {
      const opts = kc.createDispatcherOptions(cluster, agentOptions);
      cache.set(
        key,
        opts.type === 'agent'
          ? new UndiciAgent({ connect: opts.connect, headersTimeout: API_HEADERS_TIMEOUT_MS })
          : create(cluster, agentOptions),
      );
    }
    return cache.get(key);
  };
}

const RESTART_MIN_MS = 1_000;
const RESTART_MAX_MS = 30_000;

/**
 * List + watch with client-node's informer, restarted with backoff after errors (it stops on any
 * error but 410). A stalled watch is cut by client-node's own inactivity timeout and resumed.
 */
export class Watcher<T extends KubernetesObject> {
  readonly informer: Informer<T> & ObjectCache<T>;
  #what: string;
  #log: Logger;
  #stopped = false;
  #delay = RESTART_MIN_MS;
  /** what the last failure said, until a list succeeds */
  #failure: string | undefined;
  #restartTimer: NodeJS.Timeout | undefined;
  /** resolves once a list has filled the cache */
  readonly synced: Promise<void>;

  constructor(
    kc: KubeConfig,
    what: string,
    path: string,
    list: () => Promise<{ items: T[] }>,
    log: Logger,
    missingHint?: string,
  ) {
    this.#what = what;
    this.#log = log;
    let onSynced!: () => void;
    this.synced = new Promise((resolve) => {
      onSynced = resolve;
    });
    const listed = async () => {
      const r = await list();
      // listed: the API serves them again; back to the shortest wait, and a new failure is said again
      this.#delay = RESTART_MIN_MS;
      if (this.#failure !== undefined) this.#log.info(`watch of ${this.#what} resumed`);
      this.#failure = undefined;
      // the informer stores the items right after this returns, in the same turn
      setImmediate(onSynced);
      return r;
    };
    this.informer = makeInformer<T>(kc, path, listed as never);
    this.informer.on('error', (err: unknown) => {
      if (this.#stopped) return;
      // said once while it fails the same way (the waits double to 30 s meanwhile), at -v 1 every time
      const failure = notServed(err)
        ? `the host's API does not serve ${this.#what} (404 page not found)${missingHint ? `: ${missingHint}` : ''}`
        : apiMessage(err);
      if (failure !== this.#failure) this.#log.warn(`watch of ${this.#what} failed; restarting`, { err: failure });
      else this.#log.debug(1, `watch of ${this.#what} failed again; restarting`, { err: failure, inMs: this.#delay });
      this.#failure = failure;
      clearTimeout(this.#restartTimer);
      this.#restartTimer = setTimeout(() => {
        void this.#start();
      }, this.#delay);
      this.#delay = Math.min(this.#delay * 2, RESTART_MAX_MS);
    });
  }

  /** Starts; resolves once the first list is in the cache (failures are logged and retried meanwhile). */
  async start(): Promise<void> {
    await this.#start();
    await this.synced;
  }

  async #start(): Promise<void> {
    if (this.#stopped) return;
    try {
      await this.informer.start();
    } catch (err) {
      // list failures are reported through 'error' too, which schedules the retry
      this.#log.debug(2, `start of ${this.#what} watch failed`, { err: apiMessage(err) });
    }
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#restartTimer);
    void this.informer.stop();
  }
}

export { apiError, apiMessage, apiStatus, CRD_MISSING_HINT, notServed, orUndefined } from './api-errors.ts';
