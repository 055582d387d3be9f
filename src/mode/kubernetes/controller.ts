/**
 * What KubeSphere expects of its tower, done to each Cluster with `spec.connection.type: proxy` and
 * `spec.joinFederation: true`: ports, token, the mc-<name> Service and endpoints once; the kubeconfig
 * and AgentAvailable as agents come and go; the load balancer of externalKubeAPIEnabled. Every value
 * already set is kept (KubeSphere's own controller and Go towers write them too).
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { V1Service, V1ServicePort } from '@kubernetes/client-node';
import { parse as parseYaml } from 'yaml';
import type { Logger } from '../observe/log.ts';
import type { CertificateAuthority } from '../pki/ca.ts';
import { renderKubeconfig } from '../pki/kubeconfig.ts';
import { clusterNameProblem } from '../store/names.ts';
import type { Cluster, ClusterEvent, ReconcileContext } from '../store/types.ts';
import { apiMessage, apiStatus, orUndefined, type HostCluster, type Watcher } from './api.ts';
import { CLUSTERS_PATH, NAMESPACE, notOurs, type ClusterCondition, type KubeCluster } from './resource.ts';

export const PORT_MIN = 6000;
export const PORT_MAX = 7000;
export const KUBESPHERE_PORT_OFFSET = 10_000;
export const LB_ANNOTATION = 'tower.kubesphere.io/external-lb-service-annoations';
const KUBECONFIG_USER = 'kubernetes-admin';
const KUBECONFIG_GROUP = 'system:masters';
const KUBECONFIG_DAYS = 365;
/** a kubeconfig whose certificate expires sooner than this is reissued */
const KUBECONFIG_RENEW_BEFORE_MS = 30 * 24 * 3600_000;
/** after a start, agents get this long to come back before a cluster is marked AgentAvailable False */
export const AGENT_GRACE_MS = 10_000;
const RESYNC_MS = 60_000;
const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 30_000;
const MAX_CONFLICT_RETRIES = 5;

const PROBLEMS = ['spec', 'ports', 'annotation'] as const;
type Problem = (typeof PROBLEMS)[number];

const COND_INITIALIZED = 'Initialized';
const COND_AGENT = 'AgentAvailable';
const COND_EXTERNAL = 'ExternalAccessReady';

export function serviceName(cluster: string): string {
  return `mc-${cluster}`;
}

/** The shape problems of a Cluster that a schema-less CRD lets through, in one line. */
function specProblem(c: KubeCluster): string | undefined {
  const spec = c.spec as unknown;
  if (spec !== undefined && (typeof spec !== 'object' || spec === null || Array.isArray(spec)))
    return 'spec is not an object';
  const conn = (spec as KubeCluster['spec'])?.connection as unknown;
  if (conn !== undefined && (typeof conn !== 'object' || conn === null || Array.isArray(conn)))
    return `spec.connection is ${JSON.stringify(conn)}, not an object`;
  const cn = conn as Record<string, unknown> | undefined;
  for (const f of ['kubernetesAPIServerPort', 'kubesphereAPIServerPort']) {
    const v = cn?.[f];
    if (v !== undefined && v !== null && !(Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 65535))
      return `spec.connection.${f} is ${JSON.stringify(v)}, not a port number`;
  }
  for (const f of [
    'token',
    'kubeconfig',
    'kubernetesAPIEndpoint',
    'kubesphereAPIEndpoint',
    'externalKubernetesAPIEndpoint',
    'type',
  ]) {
    const v = cn?.[f];
    if (v !== undefined && v !== null && typeof v !== 'string')
      return `spec.connection.${f} is ${JSON.stringify(v)}, not a string`;
  }
  const problem = clusterNameProblem(c.metadata.name);
  if (problem) return `the name is not usable: ${problem}`;
  return undefined;
}

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
    this.#clusters = host.watch<KubeCluster>('Clusters', CLUSTERS_PATH, () => host.listClusters(), this.#log);
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
    this.#resync = setInterval(() => {
      for (const c of this.#clusters.informer.list()) this.enqueue(c.metadata.name);
    }, RESYNC_MS);
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
      if (service && ours(service, name)) await this.#deleteService(name, 'its Cluster was deleted');
      return;
    }
    for (let attempt = 0; ; attempt++) {
      const problem = specProblem(current);
      if (problem) {
        this.#report(name, 'spec', `${problem}; tower ignores this Cluster until it is fixed`, {
          fix: `kubectl edit cluster ${current.metadata.name}`,
        });
        this.#unserve(name, 'malformed spec');
        return;
      }
      this.#clear(name, 'spec');
      const why = notOurs(current);
      if (why) {
        this.#unserve(name, why);
        if (service && ours(service, name)) await this.#deleteService(name, `Cluster: ${why}`);
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
    const conn = current.spec?.connection;
    if (!conn?.token || !conn.kubernetesAPIServerPort || !conn.kubesphereAPIServerPort) {
      this.#unserve(current.metadata.name, 'not initialized yet by the replica that writes');
      return;
    }
    const ingress = current.spec?.externalKubeAPIEnabled ? service?.status?.loadBalancer?.ingress?.[0] : undefined;
    this.#serve(current, service ?? {}, ingress?.ip || ingress?.hostname || undefined);
  }

  async #reconcileOurs(current: KubeCluster): Promise<void> {
    const name = current.metadata.name;
    const desired = structuredClone(current);
    desired.spec ??= {};
    const conn = (desired.spec.connection ??= {});
    const conditions = ((desired.status ??= {}).conditions ??= []);
    const initialized = conditions.some((c) => c.type === COND_INITIALIZED && c.status === 'True');

    // first time: fill only what is missing
    if (!conn.kubernetesAPIServerPort) {
      const port = this.#allocatePort(name);
      if (port === undefined) {
        this.#report(name, 'ports', `no free port left in ${PORT_MIN}-${PORT_MAX} for its kube-apiserver endpoint`, {
          fix: 'delete unused Clusters',
        });
        return;
      }
      conn.kubernetesAPIServerPort = port;
      this.#log.info('allocated ports', {
        cluster: name,
        kubernetes: port,
        kubesphere: conn.kubesphereAPIServerPort || port + KUBESPHERE_PORT_OFFSET,
      });
    }
    if (!conn.kubesphereAPIServerPort)
      conn.kubesphereAPIServerPort = conn.kubernetesAPIServerPort + KUBESPHERE_PORT_OFFSET;
    if (!conn.token) conn.token = randomBytes(32).toString('hex');
    if (!sameJson(conn, current.spec?.connection ?? {})) {
      // the allocation is written before anything depends on it: a controller that loses the race
      // (a conflict) stops here, before it has pointed the Service at its own choice
      return this.#reconcileOurs(await this.#persist(current, desired));
    }

    const service = await this.#ensureService(desired);
    const clusterIP = service.spec?.clusterIP;
    if (clusterIP && clusterIP !== 'None') {
      const host = isIP(clusterIP) === 6 ? `[${clusterIP}]` : clusterIP;
      if (staleEndpoint(conn.kubernetesAPIEndpoint, clusterIP, service))
        conn.kubernetesAPIEndpoint = `https://${host}:6443`;
      if (staleEndpoint(conn.kubesphereAPIEndpoint, clusterIP, service))
        conn.kubesphereAPIEndpoint = `http://${host}:80`;
    }
    if (!initialized && conn.kubernetesAPIEndpoint) {
      setCondition(conditions, {
        type: COND_INITIALIZED,
        status: 'True',
        reason: COND_INITIALIZED,
        message: 'Cluster has been initialized',
      });
    }

    // a load balancer's address, once a cloud controller has written it
    let external: string | undefined;
    if (desired.spec.externalKubeAPIEnabled) {
      const ingress = service.status?.loadBalancer?.ingress?.[0];
      external = ingress?.ip || ingress?.hostname || undefined;
      if (external) {
        const url = `https://${isIP(external) === 6 ? `[${external}]` : external}:6443`;
        if (conn.externalKubernetesAPIEndpoint !== url) conn.externalKubernetesAPIEndpoint = url;
        setCondition(conditions, {
          type: COND_EXTERNAL,
          status: 'True',
          reason: COND_EXTERNAL,
          message: `The load balancer's address is ${external}`,
        });
      } else if (conditions.some((c) => c.type === COND_EXTERNAL)) {
        setCondition(conditions, {
          type: COND_EXTERNAL,
          status: 'False',
          reason: 'WaitingForAddress',
          message: 'The load balancer has no address yet',
        });
      }
    } else if (conditions.some((c) => c.type === COND_EXTERNAL)) {
      setCondition(conditions, {
        type: COND_EXTERNAL,
        status: 'False',
        reason: 'Disabled',
        message: 'spec.externalKubeAPIEnabled is not true',
      });
    }

    // agents: the kubeconfig once one is connected, AgentAvailable as they come and go
    const agents = await this.#ctx.agents(name);
    if (agents > 0) {
      const why = kubeconfigOutdated(conn.kubeconfig, conn.kubernetesAPIEndpoint, this.#ctx.ca);
      if (why && conn.kubernetesAPIEndpoint) {
        conn.kubeconfig = Buffer.from(await this.#kubeconfig(name, conn.kubernetesAPIEndpoint, this.#ctx.ca)).toString(
          'base64',
        );
        this.#log.info("wrote the cluster's kubeconfig", { cluster: name, why, server: conn.kubernetesAPIEndpoint });
      }
      setCondition(conditions, {
        type: COND_AGENT,
        status: 'True',
        message: 'Agent has connected to proxy successfully.',
      });
    } else if (Date.now() - this.#startedAt >= AGENT_GRACE_MS) {
      const had = conditions.find((c) => c.type === COND_AGENT);
      if (had)
        setCondition(conditions, { type: COND_AGENT, status: 'False', message: 'Agent has not connected to proxy.' });
    }

    if (!sameJson(desired, current)) current = await this.#persist(current, desired);
    this.#serve(current, service, external);
  }

  /** Writes `desired` over `current` (resourceVersion checked), status included either way. */
  async #persist(current: KubeCluster, desired: KubeCluster): Promise<KubeCluster> {
    const name = current.metadata.name;
    let written = await this.#host.replaceCluster(desired);
    // a CRD with a status subresource ignores status in a whole-object update
    if (!sameJson(written.status ?? {}, desired.status ?? {})) {
      written = await this.#host.replaceClusterStatus({ ...written, status: desired.status });
    }
    this.#log.debug(1, 'updated Cluster', { cluster: name, resourceVersion: written.metadata.resourceVersion });
    this.#written.set(name, { over: current.metadata.resourceVersion ?? '', obj: written });
    return written;
  }

  /** Tells the proxy about the cluster: its token, and its two ports unless another Cluster has them. */
  #serve(c: KubeCluster, service: V1Service, external: string | undefined): void {
    const name = c.metadata.name;
    const conn = c.spec!.connection!;
    const others = this.#clusters.informer
      .list()
      .filter((o) => o.metadata.name !== name)
      .map((o) => this.#latest(o.metadata.name)!);
    const collision = others.find(
      (o) =>
        !notOurs(o) &&
        !specProblem(o) &&
        (o.spec?.connection?.kubernetesAPIServerPort === conn.kubernetesAPIServerPort ||
          o.spec?.connection?.kubesphereAPIServerPort === conn.kubesphereAPIServerPort) &&
        olderThan(o, c),
    );
    let serve: Cluster['serve'];
    if (collision) {
      this.#report(
        name,
        'ports',
        `its ports ${conn.kubernetesAPIServerPort}/${conn.kubesphereAPIServerPort} are taken by Cluster "${collision.metadata.name}"; it is served through the gateway only`,
        {
          fix: `set other ports in spec.connection of ${name} (${PORT_MIN}-${PORT_MAX}), or remove them to have tower allocate free ones`,
        },
      );
    } else {
      this.#clear(name, 'ports');
      const svc = serviceName(name);
      const names = [
        `${svc}`,
        `${svc}.${NAMESPACE}`,
        `${svc}.${NAMESPACE}.svc`,
        `${svc}.${NAMESPACE}.svc.cluster.local`,
      ];
      const ip = service.spec?.clusterIP;
      if (ip && ip !== 'None') names.unshift(ip);
      for (const u of [conn.kubernetesAPIEndpoint, conn.externalKubernetesAPIEndpoint]) {
        const h = hostOfUrl(u);
        if (h) names.push(h);
      }
      if (external) names.push(external);
      serve = {
        kubernetesPort: conn.kubernetesAPIServerPort!,
        kubespherePort: conn.kubesphereAPIServerPort!,
        names: [...new Set(names)],
      };
    }
    const cluster: Cluster = {
      name,
      token: conn.token!,
      createdAt: c.metadata.creationTimestamp ? new Date(c.metadata.creationTimestamp).toISOString() : '',
      revision: c.metadata.resourceVersion ?? '',
      serve,
    };
    const before = this.#served.get(name);
    this.#served.set(name, cluster);
    if (!before) this.#emit({ type: 'added', cluster });
    else if (before.token !== cluster.token || JSON.stringify(before.serve) !== JSON.stringify(cluster.serve))
      this.#emit({ type: 'modified', cluster });
  }

  /** A free kubernetesAPIServerPort: unused by every Cluster's either port, starting at a random point. */
  #allocatePort(name: string): number | undefined {
    const used = new Set<number>();
    // as this process last wrote them: the cache may not show our latest allocations yet
    for (const cached of this.#clusters.informer.list()) {
      if (cached.metadata.name === name) continue;
      const o = this.#latest(cached.metadata.name)!;
      const cn = (o.spec?.connection ?? {}) as Record<string, unknown>;
      if (typeof cn.kubernetesAPIServerPort === 'number') used.add(cn.kubernetesAPIServerPort);
      if (typeof cn.kubesphereAPIServerPort === 'number') used.add(cn.kubesphereAPIServerPort - KUBESPHERE_PORT_OFFSET);
    }
    const span = PORT_MAX - PORT_MIN + 1;
    const start = randomBytes(2).readUInt16BE() % span;
    for (let i = 0; i < span; i++) {
      const p = PORT_MIN + ((start + i) % span);
      if (!used.has(p)) return p;
    }
    return undefined;
  }

  async #ensureService(c: KubeCluster): Promise<V1Service> {
    const name = c.metadata.name;
    const conn = c.spec!.connection!;
    const svcName = serviceName(name);
    const external = c.spec!.externalKubeAPIEnabled === true;
    const annotations = external ? this.#lbAnnotations(c) : {};
    const ports: V1ServicePort[] = [
      { name: 'kubernetes', protocol: 'TCP', port: 6443, targetPort: conn.kubernetesAPIServerPort! },
      { name: 'kubesphere', protocol: 'TCP', port: 80, targetPort: conn.kubesphereAPIServerPort! },
    ];
    const type = external ? 'LoadBalancer' : 'ClusterIP';
    const existing = this.#services.informer.get(svcName, NAMESPACE);
    if (!existing) {
      const body: V1Service = {
        metadata: {
          name: svcName,
          namespace: NAMESPACE,
          labels: { 'app.kubernetes.io/name': svcName, app: svcName },
          annotations,
        },
        spec: { selector: { 'app.kubernetes.io/name': 'tower', app: 'tower' }, ports, type },
      };
      try {
        const made = await this.#host.core.createNamespacedService({ namespace: NAMESPACE, body });
        this.#log.info('created Service', {
          cluster: name,
          service: `${NAMESPACE}/${svcName}`,
          clusterIP: made.spec?.clusterIP,
          type,
        });
        return made;
      } catch (err) {
        // the cache was behind: someone (KubeSphere, a Go tower) created it meanwhile
        if (apiStatus(err) !== 409) throw err;
        return this.#updateService(
          c,
          await this.#host.core.readNamespacedService({ name: svcName, namespace: NAMESPACE }),
          ports,
          type,
          annotations,
        );
      }
    }
    return this.#updateService(c, existing, ports, type, annotations);
  }

  async #updateService(
    c: KubeCluster,
    existing: V1Service,
    ports: V1ServicePort[],
    type: string,
    annotations: Record<string, string>,
  ): Promise<V1Service> {
    const next = structuredClone(existing);
    next.spec ??= {};
    const have = next.spec.ports ?? [];
    const samePorts = ports.every((p) =>
      have.some(
        (h) => h.port === p.port && Number(h.targetPort) === Number(p.targetPort) && (h.protocol ?? 'TCP') === 'TCP',
      ),
    );
    // node ports the API assigned (LoadBalancer) are kept
    if (!samePorts)
      next.spec.ports = ports.map((p) => ({ ...p, nodePort: have.find((h) => h.port === p.port)?.nodePort }));
    // only LoadBalancer and ClusterIP are ours to switch between (a NodePort someone chose is kept)
    if (type === 'LoadBalancer' && next.spec.type !== 'LoadBalancer') next.spec.type = 'LoadBalancer';
    if (type === 'ClusterIP' && next.spec.type === 'LoadBalancer') {
      // what only node-port types may carry goes with the load balancer
      next.spec.type = 'ClusterIP';
      for (const p of next.spec.ports ?? []) delete p.nodePort;
      delete next.spec.externalTrafficPolicy;
      delete next.spec.healthCheckNodePort;
      delete next.spec.allocateLoadBalancerNodePorts;
    }
    next.metadata ??= {};
    if (Object.keys(annotations).length > 0)
      next.metadata.annotations = { ...(next.metadata.annotations ?? {}), ...annotations };
    if (sameJson(next, existing)) return existing;
    const made = await this.#host.core.replaceNamespacedService({
      name: existing.metadata!.name!,
      namespace: NAMESPACE,
      body: next,
    });
    this.#log.info('updated Service', {
      cluster: c.metadata.name,
      service: `${NAMESPACE}/${existing.metadata!.name}`,
      type: made.spec?.type,
    });
    return made;
  }

  #lbAnnotations(c: KubeCluster): Record<string, string> {
    const raw = c.metadata.annotations?.[LB_ANNOTATION];
    if (!raw) {
      this.#clear(c.metadata.name, 'annotation');
      return {};
    }
    try {
      const parsed = JSON.parse(raw) as unknown;
      if (
        typeof parsed !== 'object' ||
        parsed === null ||
        Array.isArray(parsed) ||
        Object.values(parsed).some((v) => typeof v !== 'string')
      ) {
        throw new Error('want a JSON object of strings');
      }
      this.#clear(c.metadata.name, 'annotation');
      return parsed as Record<string, string>;
    } catch (err) {
      this.#report(
        c.metadata.name,
        'annotation',
        `annotation ${LB_ANNOTATION} is not usable (${(err as Error).message}); the Service keeps its annotations`,
        { fix: `kubectl annotate --overwrite cluster ${c.metadata.name} ${LB_ANNOTATION}='{"key":"value"}'` },
      );
      return {};
    }
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

/** A Service tower (or KubeSphere, or a Go tower) made for the cluster: by name and label. */
function ours(service: V1Service, cluster: string): boolean {
  return service.metadata?.labels?.['app.kubernetes.io/name'] === serviceName(cluster);
}

/** Adds or updates a condition; lastTransitionTime moves only when the status does. An empty reason is left out. */
function setCondition(
  conditions: ClusterCondition[],
  c: { type: string; status: string; reason?: string; message: string },
): void {
  const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const had = conditions.find((x) => x.type === c.type);
  if (!had) {
    conditions.push({
      type: c.type,
      status: c.status,
      lastUpdateTime: now,
      lastTransitionTime: now,
      ...(c.reason ? { reason: c.reason } : {}),
      message: c.message,
    });
    return;
  }
  if (had.status === c.status && had.message === c.message && (had.reason ?? '') === (c.reason ?? '')) return;
  if (had.status !== c.status) had.lastTransitionTime = now;
  had.status = c.status;
  if (c.reason) had.reason = c.reason;
  else delete had.reason;
  had.message = c.message;
  had.lastUpdateTime = now;
}

/** An endpoint is filled when empty, or when it names an old ClusterIP of a recreated Service. */
function staleEndpoint(url: string | undefined, clusterIP: string, service: V1Service): boolean {
  if (!url) return true;
  const h = hostOfUrl(url);
  if (!h || !isIP(h) || h === clusterIP) return false;
  // another address of the Service (a load balancer's, an external IP) stays; an old ClusterIP goes
  const lb = service.status?.loadBalancer?.ingress?.some((i) => i.ip === h) ?? false;
  return !lb && !(service.spec?.externalIPs ?? []).includes(h);
}

function hostOfUrl(u: string | undefined): string | undefined {
  if (!u) return undefined;
  try {
    return new URL(u).hostname.replace(/^\[|\]$/g, '') || undefined;
  } catch {
    return undefined;
  }
}

/** Deep equality of JSON values, whatever the order of object keys (the API sorts them). */
function sameJson(a: unknown, b: unknown): boolean {
  return canonical(a) === canonical(b);
}

function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) =>
    x && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(
          Object.entries(x as Record<string, unknown>)
            .filter(([, y]) => y !== undefined)
            .sort(([p], [q]) => (p < q ? -1 : p > q ? 1 : 0)),
        )
      : x,
  );
}

function olderThan(a: KubeCluster, b: KubeCluster): boolean {
  const ta = Date.parse(String(a.metadata.creationTimestamp ?? '')) || 0;
  const tb = Date.parse(String(b.metadata.creationTimestamp ?? '')) || 0;
  return ta !== tb ? ta < tb : a.metadata.name < b.metadata.name;
}

/** Why the stored kubeconfig must be rewritten, or undefined when it is still good. */
export function kubeconfigOutdated(
  b64: string | undefined,
  server: string | undefined,
  ca: CertificateAuthority,
): string | undefined {
  if (!b64) return 'missing';
  try {
    const doc = parseYaml(Buffer.from(b64, 'base64').toString('utf8')) as {
      clusters?: { cluster?: { server?: string; 'certificate-authority-data'?: string } }[];
      users?: { user?: { 'client-certificate-data'?: string } }[];
    };
    const cluster = doc?.clusters?.[0]?.cluster;
    if (cluster?.server !== server) return `it points to ${cluster?.server ?? 'nothing'}`;
    if (
      Buffer.from(cluster?.['certificate-authority-data'] ?? '', 'base64')
        .toString('utf8')
        .trim() !== ca.certPem.trim()
    )
      return 'it trusts another CA';
    const certPem = Buffer.from(doc?.users?.[0]?.user?.['client-certificate-data'] ?? '', 'base64').toString('utf8');
    const cert = new X509Certificate(certPem);
    if (Date.parse(cert.validTo) - Date.now() < KUBECONFIG_RENEW_BEFORE_MS) return 'its certificate nears expiry';
    if (!cert.checkIssued(new X509Certificate(ca.certPem))) return "its certificate is not from tower's CA";
    return undefined;
  } catch {
    return 'it is unreadable';
  }
}
