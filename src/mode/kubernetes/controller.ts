/**
 * What KubeSphere expects of its tower, done to each Cluster with `spec.connection.type: proxy` and
 * `spec.joinFederation: true`: ports, token, the mc-<name> Service and endpoints once; the kubeconfig
 * and AgentAvailable as agents come and go; the load balancer of externalKubeAPIEnabled. Every value
 * already set is kept (KubeSphere's own controller and Go towers write them too). What to write is
 * decided in desired.ts; this class reads the caches, calls it, and writes the difference.
 */
import { randomBytes } from 'node:crypto';
import type { V1Service } from '@kubernetes/client-node';
import type { Logger } from '../../observe/log.ts';
import type { CertificateAuthority } from '../../pki/ca.ts';
import { renderKubeconfig } from '../../pki/kubeconfig.ts';
import type { Cluster, ClusterEvent, ReconcileContext } from '../mode.ts';
import { apiMessage, apiStatus, CRD_MISSING_HINT, orUndefined, type HostCluster, type Watcher } from './api.ts';
import {
  AGENT_GRACE_MS,
  allocatePort,
  COND_AGENT,
  desiredCluster,
  initialization,
  initializedByWriter,
  LB_ANNOTATION,
  loadBalancerAddress,
  loadBalancerAnnotations,
  ownsService,
  PORT_MAX,
  PORT_MIN,
  sameJson,
  served,
  servedChange,
  serviceFor,
  serviceName,
  serviceToCreate,
  serviceToReplace,
  unserved,
  verdict,
  type WantedService,
} from './desired.ts';
import { CLUSTERS_PATH, NAMESPACE, type KubeCluster } from './resource.ts';

const KUBECONFIG_USER = 'kubernetes-admin';
const KUBECONFIG_GROUP = 'system:masters';
const KUBECONFIG_DAYS = 365;
const RESYNC_MS = 60_000;
const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 30_000;
const MAX_CONFLICT_RETRIES = 5;

const PROBLEMS = ['spec', 'ports', 'annotation'] as const;
type Problem = (typeof PROBLEMS)[number];

export class ClusterController {
  #host: HostCluster;
  #ctx: ReconcileContext & { log: Logger };
  #log: Logger;
  #clusters: Watcher<KubeCluster>;
  #services: Watcher<V1Service>;
  #emit: (ev: ClusterEvent) => void;
  /** what the proxy has been told, by name */
  #served = new Map<string, Cluster>();
  /** our last write of each Cluster, and the resourceVersion it replaced */
  #written = new Map<string, { over: string; obj: KubeCluster }>();
  /** one reconcile at a time, so that allocations never race each other */
  #queue = new Set<string>();
  #draining = false;
  #resync: NodeJS.Timeout | undefined;
  #graceTimer: NodeJS.Timeout | undefined;
  #startedAt = Date.now();
  /** the last problem logged per cluster, so that a resync does not repeat it */
  #reported = new Map<string, string>();
  #stopped = false;
  #retries = new Map<string, { delay: number; timer: NodeJS.Timeout }>();
  /** nothing is reconciled before both caches are filled: an empty cache would look like deleted Clusters */
  #ready = false;
  /** whether this replica writes (leader election: the lease holder); else it only reads what the writer wrote */
  #writer: boolean;

  constructor(
    host: HostCluster,
    ctx: ReconcileContext & { log: Logger },
    emit: (ev: ClusterEvent) => void,
    writer = true,
  ) {
    this.#writer = writer;
    this.#host = host;
    this.#ctx = ctx;
    this.#log = ctx.log;
    this.#emit = emit;
    this.#clusters = host.watch<KubeCluster>(
      'Clusters',
      CLUSTERS_PATH,
      () => host.listClusters(),
      this.#log,
      CRD_MISSING_HINT,
    );
    this.#services = host.watch<V1Service>(
      `Services in ${NAMESPACE}`,
      `/api/v1/namespaces/${NAMESPACE}/services`,
      () => host.core.listNamespacedService({ namespace: NAMESPACE }) as Promise<{ items: V1Service[] }>,
      this.#log,
    );
    const onCluster = (c: KubeCluster) => this.enqueue(c.metadata.name);
    this.#clusters.informer.on('add', onCluster);
    this.#clusters.informer.on('update', onCluster);
    this.#clusters.informer.on('delete', onCluster);
    const onService = (s: V1Service) => {
      const name = s.metadata?.name ?? '';
      if (name.startsWith('mc-')) this.enqueue(name.slice(3));
    };
    this.#services.informer.on('add', onService);
    this.#services.informer.on('update', onService);
    this.#services.informer.on('delete', onService);
  }

  get served(): Map<string, Cluster> {
    return this.#served;
  }

  async start(): Promise<void> {
    this.#startedAt = Date.now();
    await Promise.all([this.#services.start(), this.#clusters.start()]);
    for (const c of this.#clusters.informer.list()) this.#queue.add(c.metadata.name);
    this.#ready = true;
    await this.#drain();
    const all = () => {
      for (const c of this.#clusters.informer.list()) this.enqueue(c.metadata.name);
    };
    this.#resync = setInterval(all, RESYNC_MS);
    // a kubeconfig written with a certificate revoked since is issued anew now, not at the next resync
    this.#ctx.onRevised?.(all);
    this.#resync.unref();
    // agents that have not come back after the grace period get AgentAvailable False
    this.#graceTimer = setTimeout(() => {
      for (const name of this.#served.keys()) this.enqueue(name);
    }, AGENT_GRACE_MS);
    this.#graceTimer.unref();
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#resync);
    clearTimeout(this.#graceTimer);
    for (const r of this.#retries.values()) clearTimeout(r.timer);
    this.#clusters.stop();
    this.#services.stop();
  }

  /** This replica now writes: everything is looked at again, and agents get their grace period from now. */
  lead(): void {
    if (this.#writer) return;
    this.#writer = true;
    this.#startedAt = Date.now();
    clearTimeout(this.#graceTimer);
    this.#graceTimer = setTimeout(() => {
      for (const name of this.#served.keys()) this.enqueue(name);
    }, AGENT_GRACE_MS);
    this.#graceTimer.unref();
    for (const c of this.#clusters.informer.list()) this.enqueue(c.metadata.name);
  }

  /**
   * This replica is the last one and stops: every Cluster it served with AgentAvailable True is left
   * `unserved` (Unknown). A proxy that starts and does not find the agent back sets False after the agents'
   * grace period. Only the writer does this; a failure is logged and the rest still written.
   */
  async withdraw(): Promise<void> {
    if (!this.#writer) return;
    // the last thing it writes: agents still connected meanwhile must not set it True again
    this.#writer = false;
    const now = new Date().toISOString();
    for (const name of [...this.#served.keys()]) {
      const current = this.#latest(name);
      const conditions = current?.status?.conditions ?? [];
      if (!current || !conditions.some((c) => c.type === COND_AGENT && c.status === 'True')) continue;
      const desired = structuredClone(current);
      desired.status!.conditions = conditions.map((c) =>
        c.type === COND_AGENT ? unserved(c, 'the last replica stopped', now) : c,
      );
      try {
        await this.#persist(current, desired);
      } catch (err) {
        this.#log.warn('cannot mark the Cluster unavailable on the way out', { cluster: name, err: apiMessage(err) });
      }
    }
  }

  /** Another replica writes: this one serves what it reads. */
  follow(): void {
    this.#writer = false;
  }

  enqueue(name: string): void {
    if (this.#stopped) return;
    this.#queue.add(name);
    if (this.#ready && !this.#draining) void this.#drain();
  }

  async #drain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    try {
      while (this.#queue.size > 0 && !this.#stopped) {
        const name = this.#queue.values().next().value!;
        this.#queue.delete(name);
        try {
          await this.#reconcile(name);
          this.#retries.delete(name);
        } catch (err) {
          this.#retryLater(name, err);
        }
      }
    } finally {
      this.#draining = false;
    }
  }

  /** A failed reconcile comes back after a backoff (1 s doubling to 30 s), and at every change meanwhile. */
  #retryLater(name: string, err: unknown): void {
    const prev = this.#retries.get(name);
    const delay = Math.min((prev?.delay ?? RETRY_MIN_MS / 2) * 2, RETRY_MAX_MS);
    clearTimeout(prev?.timer);
    const timer = setTimeout(() => this.enqueue(name), delay);
    timer.unref();
    this.#retries.set(name, { delay, timer });
    this.#ctx.onError?.();
    this.#log.error('cannot reconcile cluster; retrying', { cluster: name, err: apiMessage(err), inMs: delay });
  }

  /** Logs a problem of one kind once, until it changes or clear() says it is gone. */
  #report(name: string, kind: Problem, problem: string, fields: Record<string, unknown> = {}): void {
    const key = `${name}/${kind}`;
    if (this.#reported.get(key) === problem) return;
    this.#reported.set(key, problem);
    this.#log.error(`cluster "${name}": ${problem}`, { cluster: name, ...fields });
  }

  #unserve(name: string, why: string): void {
    if (!this.#served.delete(name)) return;
    this.#log.info('cluster no longer served', { cluster: name, why });
    this.#emit({ type: 'deleted', name });
  }

  /**
   * The Cluster as last known: the cache, unless it still shows what this process overwrote (a
   * watch lags behind our own writes; acting on the old object would allocate a second time).
   */
  #latest(name: string): KubeCluster | undefined {
    const cached = this.#clusters.informer.get(name);
    const mine = this.#written.get(name);
    if (!mine || !cached) {
      this.#written.delete(name);
      return cached;
    }
    if (cached.metadata.resourceVersion === mine.over) return mine.obj;
    // the cache has caught up with our write, or someone wrote after it: the cache is the newer
    this.#written.delete(name);
    return cached;
  }

  #clear(name: string, ...kinds: Problem[]): void {
    for (const k of kinds) {
      if (this.#reported.delete(`${name}/${k}`))
        this.#log.info(`cluster "${name}": the ${k} problem is resolved`, { cluster: name });
    }
  }

  async #reconcile(name: string): Promise<void> {
    let current = this.#latest(name);
    const service = this.#services.informer.get(serviceName(name), NAMESPACE);
    if (!current) {
      for (const k of PROBLEMS) this.#reported.delete(`${name}/${k}`);
      this.#unserve(name, 'the Cluster was deleted');
      if (service && ownsService(service, name)) await this.#deleteService(name, 'its Cluster was deleted');
      return;
    }
    for (let attempt = 0; ; attempt++) {
      const v = verdict(current);
      if (v.kind === 'malformed') {
        this.#report(name, 'spec', `${v.problem}; tower ignores this Cluster until it is fixed`, {
          fix: `kubectl edit cluster ${current.metadata.name}`,
        });
        this.#unserve(name, 'malformed spec');
        return;
      }
      this.#clear(name, 'spec');
      if (v.kind === 'not ours') {
        this.#unserve(name, v.why);
        if (service && ownsService(service, name)) await this.#deleteService(name, `Cluster: ${v.why}`);
        return;
      }
      if (!this.#writer) {
        this.#follow(current, service);
        return;
      }
      try {
        await this.#reconcileOurs(current);
        return;
      } catch (err) {
        if (apiStatus(err) !== 409 || attempt >= MAX_CONFLICT_RETRIES) throw err;
        const fresh = await orUndefined(this.#host.getCluster(name));
        if (!fresh) return this.#reconcile(name);
        current = fresh;
      }
    }
  }

  /** A follower serves a Cluster as the writer left it, once that one has given it a token and ports. */
  #follow(current: KubeCluster, service: V1Service | undefined): void {
    if (!initializedByWriter(current)) {
      this.#unserve(current.metadata.name, 'not initialized yet by the replica that writes');
      return;
    }
    this.#serve(current, service ?? {}, loadBalancerAddress(current, service));
  }

  async #reconcileOurs(current: KubeCluster): Promise<void> {
    const name = current.metadata.name;
    // first time: fill only what is missing, and write it before anything depends on it (a controller
    // that loses the race, a conflict, stops here, before it has pointed the Service at its own choice)
    const init = initialization(current, {
      port: () => allocatePort(this.#others(name), randomBytes(2).readUInt16BE()),
      token: () => randomBytes(32).toString('hex'),
    });
    if (init.kind === 'no free port') {
      this.#report(name, 'ports', `no free port left in ${PORT_MIN}-${PORT_MAX} for its kube-apiserver endpoint`, {
        fix: 'delete unused Clusters',
      });
      return;
    }
    if (init.kind === 'write') {
      if (init.allocated) this.#log.info('allocated ports', { cluster: name, ...init.allocated });
      return this.#reconcileOurs(await this.#persist(current, init.cluster));
    }

    const service = await this.#ensureService(current);
    const agents = await this.#ctx.agents(name);
    const desired = desiredCluster({
      cluster: current,
      service,
      agents,
      writingSince: this.#startedAt,
      now: Date.now(),
      caPem: this.#ctx.ca.certPem,
      revoked: this.#ctx.revoked,
    });
    if (desired.kubeconfig) {
      const { why, server } = desired.kubeconfig;
      const kubeconfig = await this.#kubeconfig(name, server, this.#ctx.ca);
      desired.cluster.spec!.connection!.kubeconfig = Buffer.from(kubeconfig).toString('base64');
      this.#log.info("wrote the cluster's kubeconfig", { cluster: name, why, server });
    }
    if (!sameJson(desired.cluster, current)) current = await this.#persist(current, desired.cluster);
    this.#serve(current, service, desired.external);
  }

  /** Writes `desired` over `current` (resourceVersion checked), status included either way. */
  async #persist(current: KubeCluster, desired: KubeCluster): Promise<KubeCluster> {
    const name = current.metadata.name;
    const written = await this.#host.updateCluster(desired);
    this.#log.debug(1, 'updated Cluster', { cluster: name, resourceVersion: written.metadata.resourceVersion });
    this.#written.set(name, { over: current.metadata.resourceVersion ?? '', obj: written });
    return written;
  }

  /** The other Clusters as this process last wrote them: the cache may not show our latest writes yet. */
  #others(name: string): KubeCluster[] {
    return this.#clusters.informer
      .list()
      .filter((o) => o.metadata.name !== name)
      .map((o) => this.#latest(o.metadata.name)!);
  }

  /** Tells the proxy about the cluster: its token, and its two ports unless another Cluster has them. */
  #serve(c: KubeCluster, service: V1Service, external: string | undefined): void {
    const name = c.metadata.name;
    const conn = c.spec!.connection!;
    const { cluster, collidesWith } = served(c, this.#others(name), service, external);
    if (collidesWith) {
      this.#report(
        name,
        'ports',
        `its ports ${conn.kubernetesAPIServerPort}/${conn.kubesphereAPIServerPort} are taken by Cluster ` +
          `"${collidesWith}"; it is served through the gateway only`,
        {
          fix:
            `set other ports in spec.connection of ${name} (${PORT_MIN}-${PORT_MAX}), or remove them to have tower ` +
            `allocate free ones`,
        },
      );
    } else {
      this.#clear(name, 'ports');
    }
    const before = this.#served.get(name);
    this.#served.set(name, cluster);
    const change = servedChange(before, cluster);
    if (change) this.#emit({ type: change, cluster });
  }

  async #ensureService(c: KubeCluster): Promise<V1Service> {
    const name = c.metadata.name;
    const lb = loadBalancerAnnotations(c);
    if (lb?.problem)
      this.#report(name, 'annotation', lb.problem, {
        fix: `kubectl annotate --overwrite cluster ${name} ${LB_ANNOTATION}='{"key":"value"}'`,
      });
    else if (lb) this.#clear(name, 'annotation');
    const wanted = serviceFor(c, lb?.annotations ?? {});
    const existing = this.#services.informer.get(wanted.name, NAMESPACE);
    if (!existing) {
      try {
        const made = await this.#host.core.createNamespacedService({
          namespace: NAMESPACE,
          body: serviceToCreate(wanted),
        });
        this.#log.info('created Service', {
          cluster: name,
          service: `${NAMESPACE}/${wanted.name}`,
          clusterIP: made.spec?.clusterIP,
          type: wanted.type,
        });
        return made;
      } catch (err) {
        // the cache was behind: someone (KubeSphere, a Go tower) created it meanwhile
        if (apiStatus(err) !== 409) throw err;
        const read = await this.#host.core.readNamespacedService({ name: wanted.name, namespace: NAMESPACE });
        return this.#updateService(name, read, wanted);
      }
    }
    return this.#updateService(name, existing, wanted);
  }

  async #updateService(cluster: string, existing: V1Service, wanted: WantedService): Promise<V1Service> {
    const next = serviceToReplace(existing, wanted);
    if (!next) return existing;
    const made = await this.#host.core.replaceNamespacedService({
      name: existing.metadata!.name!,
      namespace: NAMESPACE,
      body: next,
    });
    this.#log.info('updated Service', {
      cluster,
      service: `${NAMESPACE}/${existing.metadata!.name}`,
      type: made.spec?.type,
    });
    return made;
  }

  async #deleteService(name: string, why: string): Promise<void> {
    try {
      await this.#host.core.deleteNamespacedService({ name: serviceName(name), namespace: NAMESPACE });
      this.#log.info('deleted Service', { cluster: name, service: `${NAMESPACE}/${serviceName(name)}`, why });
    } catch (err) {
      if (apiStatus(err) !== 404) throw err;
    }
  }

  async #kubeconfig(name: string, server: string, ca: CertificateAuthority): Promise<string> {
    const leaf = await ca.issueClient(KUBECONFIG_USER, [KUBECONFIG_GROUP], KUBECONFIG_DAYS, name);
    return renderKubeconfig({
      cluster: name,
      server,
      caPem: ca.certPem,
      user: KUBECONFIG_USER,
      certPem: leaf.cert,
      keyPem: leaf.key,
    });
  }
}
