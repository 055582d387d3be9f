/**
 * What the Cluster controller wants, decided from what it has read: whether it acts on a Cluster, the
 * port to allocate, the mc-<name> Service, the Cluster's endpoints and conditions, the kubeconfig to
 * reissue, what the proxy serves. Pure functions (the time and the random start are arguments), so that
 * each decision is tested without an API server; controller.ts reads, calls these and writes the difference.
 */
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { V1Service, V1ServicePort } from '@kubernetes/client-node';
import { parse as parseYaml } from 'yaml';
import { clusterNameProblem } from '../../config/names.ts';
import type { Cluster } from '../mode.ts';
import { NAMESPACE, PROXY_OWNED_LABELS, notOurs, type ClusterCondition, type KubeCluster } from './resource.ts';
import { x509Facts, type CertificateFacts } from '../../pki/revocations.ts';

export const PORT_MIN = 6000;
export const PORT_MAX = 7000;
export const KUBESPHERE_PORT_OFFSET = 10_000;
export const LB_ANNOTATION = 'tower.kubesphere.io/external-lb-service-annoations';
/** after a start, agents get this long to come back before a cluster is marked AgentAvailable False */
export const AGENT_GRACE_MS = 10_000;
/** a kubeconfig whose certificate expires sooner than this is reissued */
const KUBECONFIG_RENEW_BEFORE_MS = 30 * 24 * 3600_000;
/** the ports the mc-<name> Service offers, as KubeSphere dials them */
const SERVICE_KUBERNETES_PORT = 6443;
const SERVICE_KUBESPHERE_PORT = 80;

export const COND_INITIALIZED = 'Initialized';
export const COND_AGENT = 'AgentAvailable';
export const COND_EXTERNAL = 'ExternalAccessReady';

export type Connection = NonNullable<NonNullable<KubeCluster['spec']>['connection']>;

/** A copy of a Cluster with the parts the controller fills present (what it writes, when it writes). */
type Draft = KubeCluster & {
  spec: NonNullable<KubeCluster['spec']> & { connection: Connection };
  status: { conditions: ClusterCondition[] };
};

function draft(c: KubeCluster): Draft {
  const d = structuredClone(c);
  d.spec ??= {};
  d.spec.connection ??= {};
  (d.status ??= {}).conditions ??= [];
  return d as Draft;
}

export function serviceName(cluster: string): string {
  return `mc-${cluster}`;
}

/** A Service tower (or KubeSphere, or a Go tower) made for the cluster: by name and label. */
export function ownsService(service: V1Service, cluster: string): boolean {
  return service.metadata?.labels?.['app.kubernetes.io/name'] === serviceName(cluster);
}

/** The shape problems of a Cluster that a schema-less CRD lets through, in one line. */
export function specProblem(c: KubeCluster): string | undefined {
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

/**
 * What the controller does with a Cluster that exists: ignore it while its spec is malformed (its
 * Service is left alone), let it go when it is not a proxy Cluster of the federation (its Service is
 * deleted), else serve it.
 */
export type Verdict = { kind: 'malformed'; problem: string } | { kind: 'not ours'; why: string } | { kind: 'ours' };

export function verdict(c: KubeCluster): Verdict {
  const problem = specProblem(c);
  if (problem) return { kind: 'malformed', problem };
  const why = notOurs(c);
  if (why) return { kind: 'not ours', why };
  return { kind: 'ours' };
}

/** Whether the replica that writes has given the Cluster its token and ports (before, a follower serves nothing). */
export function initializedByWriter(c: KubeCluster): boolean {
  const conn = c.spec?.connection;
  return Boolean(conn?.token && conn.kubernetesAPIServerPort && conn.kubesphereAPIServerPort);
}

/** The load balancer's address, once a cloud controller has written it, for a Cluster that asks for one. */
export function loadBalancerAddress(c: KubeCluster, service: V1Service | undefined): string | undefined {
  if (!c.spec?.externalKubeAPIEnabled) return undefined;
  const ingress = service?.status?.loadBalancer?.ingress?.[0];
  return ingress?.ip || ingress?.hostname || undefined;
}

/**
 * A free kubernetesAPIServerPort: unused by every other Cluster's either port (its kubesphere port
 * less the offset), looked for from `random` (any non-negative integer) onwards, around the range.
 */
export function allocatePort(others: KubeCluster[], random: number): number | undefined {
  const used = new Set<number>();
  for (const o of others) {
    // read as unknown: another Cluster's spec may be malformed
    const cn = (o.spec?.connection ?? {}) as Record<string, unknown>;
    if (typeof cn.kubernetesAPIServerPort === 'number') used.add(cn.kubernetesAPIServerPort);
    if (typeof cn.kubesphereAPIServerPort === 'number') used.add(cn.kubesphereAPIServerPort - KUBESPHERE_PORT_OFFSET);
  }
  const span = PORT_MAX - PORT_MIN + 1;
  const start = random % span;
  for (let i = 0; i < span; i++) {
    const p = PORT_MIN + ((start + i) % span);
    if (!used.has(p)) return p;
  }
  return undefined;
}

/**
 * The first step for a Cluster of ours: its ports and token, filled only where missing, and written
 * before anything depends on them. `fresh` is asked only for what is missing.
 */
export type Initialization =
  | { kind: 'complete' }
  | { kind: 'write'; cluster: KubeCluster; allocated?: { kubernetes: number; kubesphere: number } }
  | { kind: 'no free port' };

export function initialization(
  current: KubeCluster,
  fresh: { port: () => number | undefined; token: () => string },
): Initialization {
  const desired = draft(current);
  const conn = desired.spec.connection;
  let allocated: { kubernetes: number; kubesphere: number } | undefined;
  if (!conn.kubernetesAPIServerPort) {
    const port = fresh.port();
    if (port === undefined) return { kind: 'no free port' };
    conn.kubernetesAPIServerPort = port;
    allocated = { kubernetes: port, kubesphere: conn.kubesphereAPIServerPort || port + KUBESPHERE_PORT_OFFSET };
  }
  if (!conn.kubesphereAPIServerPort)
    conn.kubesphereAPIServerPort = conn.kubernetesAPIServerPort + KUBESPHERE_PORT_OFFSET;
  if (!conn.token) conn.token = fresh.token();
  if (sameJson(conn, current.spec?.connection ?? {})) return { kind: 'complete' };
  return { kind: 'write', cluster: desired, ...(allocated ? { allocated } : {}) };
}

/**
 * The load balancer's annotations from the Cluster's annotation, for a Cluster with
 * externalKubeAPIEnabled (undefined otherwise); when unusable, none, and the problem in a line.
 */
export function loadBalancerAnnotations(
  c: KubeCluster,
): { annotations: Record<string, string>; problem?: string } | undefined {
  if (c.spec?.externalKubeAPIEnabled !== true) return undefined;
  const raw = c.metadata.annotations?.[LB_ANNOTATION];
  if (!raw) return { annotations: {} };
  let why: string;
  try {
    const parsed = JSON.parse(raw) as unknown;
    if (
      typeof parsed === 'object' &&
      parsed !== null &&
      !Array.isArray(parsed) &&
      Object.values(parsed).every((v) => typeof v === 'string')
    )
      return { annotations: parsed as Record<string, string> };
    why = 'want a JSON object of strings';
  } catch (err) {
    why = (err as Error).message;
  }
  return {
    annotations: {},
    problem: `annotation ${LB_ANNOTATION} is not usable (${why}); the Service keeps its annotations`,
  };
}

/** The mc-<name> Service as a Cluster wants it. */
export interface WantedService {
  name: string;
  type: 'LoadBalancer' | 'ClusterIP';
  ports: V1ServicePort[];
  /** the load balancer's, laid over those the Service has */
  annotations: Record<string, string>;
}

/** `c` has its ports (initialization() is complete); `annotations` are loadBalancerAnnotations()'. */
export function serviceFor(c: KubeCluster, annotations: Record<string, string>): WantedService {
  const conn = c.spec!.connection!;
  return {
    name: serviceName(c.metadata.name),
    type: c.spec!.externalKubeAPIEnabled === true ? 'LoadBalancer' : 'ClusterIP',
    ports: [
      { name: 'kubernetes', protocol: 'TCP', port: SERVICE_KUBERNETES_PORT, targetPort: conn.kubernetesAPIServerPort! },
      { name: 'kubesphere', protocol: 'TCP', port: SERVICE_KUBESPHERE_PORT, targetPort: conn.kubesphereAPIServerPort! },
    ],
    annotations,
  };
}

/** The Service to create when there is none: labelled as the cluster's, selecting tower's pods. */
export function serviceToCreate(w: WantedService): V1Service {
  return {
    metadata: {
      name: w.name,
      namespace: NAMESPACE,
      labels: { 'app.kubernetes.io/name': w.name, app: w.name, ...PROXY_OWNED_LABELS },
      annotations: w.annotations,
    },
    spec: { selector: { 'app.kubernetes.io/name': 'tower', app: 'tower' }, ports: w.ports, type: w.type },
  };
}

/**
 * The Service to write over `existing`, or undefined when it already is as wanted. Everything else
 * someone set is kept: node ports the API assigned, a NodePort type someone chose, other annotations.
 */
export function serviceToReplace(existing: V1Service, w: WantedService): V1Service | undefined {
  const next = structuredClone(existing);
  next.spec ??= {};
  const have = next.spec.ports ?? [];
  const samePorts = w.ports.every((p) =>
    have.some(
      (h) => h.port === p.port && Number(h.targetPort) === Number(p.targetPort) && (h.protocol ?? 'TCP') === 'TCP',
    ),
  );
  if (!samePorts)
    next.spec.ports = w.ports.map((p) => ({ ...p, nodePort: have.find((h) => h.port === p.port)?.nodePort }));
  // only LoadBalancer and ClusterIP are ours to switch between
  if (w.type === 'LoadBalancer' && next.spec.type !== 'LoadBalancer') next.spec.type = 'LoadBalancer';
  if (w.type === 'ClusterIP' && next.spec.type === 'LoadBalancer') {
    // what only node-port types may carry goes with the load balancer
    next.spec.type = 'ClusterIP';
    for (const p of next.spec.ports ?? []) delete p.nodePort;
    delete next.spec.externalTrafficPolicy;
    delete next.spec.healthCheckNodePort;
    delete next.spec.allocateLoadBalancerNodePorts;
  }
  next.metadata ??= {};
  if (Object.keys(w.annotations).length > 0)
    next.metadata.annotations = { ...(next.metadata.annotations ?? {}), ...w.annotations };
  return sameJson(next, existing) ? undefined : next;
}

/** What the controller has read about a Cluster of ours whose ports and token are written. */
export interface Observed {
  cluster: KubeCluster;
  /** the mc-<name> Service as the API last returned it */
  service: V1Service;
  /** agents connected for the cluster, across the replicas */
  agents: number;
  /** since when this replica writes (ms): agents get AGENT_GRACE_MS from then to come back */
  writingSince: number;
  now: number;
  /** tower's CA, which the kubeconfig must trust and be issued by */
  caPem: string;
  /** whether `tower revoke` revoked a certificate (then its kubeconfig is issued anew) */
  revoked?: (facts: CertificateFacts) => boolean;
}

export interface Desired {
  /** the Cluster to write: equal (sameJson) to the observed one when nothing is to change */
  cluster: KubeCluster;
  /** the load balancer's address, when there is one */
  external?: string;
  /** a kubeconfig to issue for `server` and store in spec.connection.kubeconfig, and why */
  kubeconfig?: { why: string; server: string };
}

/**
 * The Cluster as it should be: endpoints on the Service's ClusterIP, Initialized once they are,
 * the load balancer's endpoint and ExternalAccessReady, AgentAvailable as agents come and go (False
 * only after the grace period, and only over a True or False already there). Every value already set
 * is kept (KubeSphere's own controller and Go towers write them too).
 */
export function desiredCluster(o: Observed): Desired {
  const desired = draft(o.cluster);
  const conn = desired.spec.connection;
  const conditions = desired.status.conditions;
  const set = (c: Condition) => setCondition(conditions, c, o.now);
  const initialized = conditions.some((c) => c.type === COND_INITIALIZED && c.status === 'True');

  const clusterIP = o.service.spec?.clusterIP;
  if (clusterIP && clusterIP !== 'None') {
    const host = isIP(clusterIP) === 6 ? `[${clusterIP}]` : clusterIP;
    if (staleEndpoint(conn.kubernetesAPIEndpoint, clusterIP, o.service))
      conn.kubernetesAPIEndpoint = `https://${host}:${SERVICE_KUBERNETES_PORT}`;
    if (staleEndpoint(conn.kubesphereAPIEndpoint, clusterIP, o.service))
      conn.kubesphereAPIEndpoint = `http://${host}:${SERVICE_KUBESPHERE_PORT}`;
  }
  if (!initialized && conn.kubernetesAPIEndpoint)
    set({ type: COND_INITIALIZED, status: 'True', reason: COND_INITIALIZED, message: 'Cluster has been initialized' });

  const external = loadBalancerAddress(desired, o.service);
  if (external) {
    const host = isIP(external) === 6 ? `[${external}]` : external;
    conn.externalKubernetesAPIEndpoint = `https://${host}:${SERVICE_KUBERNETES_PORT}`;
    set({
      type: COND_EXTERNAL,
      status: 'True',
      reason: COND_EXTERNAL,
      message: `The load balancer's address is ${external}`,
    });
  } else if (conditions.some((c) => c.type === COND_EXTERNAL)) {
    set(
      desired.spec.externalKubeAPIEnabled
        ? {
            type: COND_EXTERNAL,
            status: 'False',
            reason: 'WaitingForAddress',
            message: 'The load balancer has no address yet',
          }
        : {
            type: COND_EXTERNAL,
            status: 'False',
            reason: 'Disabled',
            message: 'spec.externalKubeAPIEnabled is not true',
          },
    );
  }

  let kubeconfig: Desired['kubeconfig'];
  if (o.agents > 0) {
    const why = kubeconfigOutdated(conn.kubeconfig, conn.kubernetesAPIEndpoint, o.caPem, o.now, o.revoked);
    if (why && conn.kubernetesAPIEndpoint) kubeconfig = { why, server: conn.kubernetesAPIEndpoint };
    set({ type: COND_AGENT, status: 'True', message: 'Agent has connected to proxy successfully.' });
  } else if (o.now - o.writingSince >= AGENT_GRACE_MS && conditions.some((c) => c.type === COND_AGENT)) {
    set({ type: COND_AGENT, status: 'False', message: 'Agent has not connected to proxy.' });
  }
  return { cluster: desired, ...(external ? { external } : {}), ...(kubeconfig ? { kubeconfig } : {}) };
}

interface Condition {
  type: string;
  status: string;
  reason?: string;
  message: string;
}

/** why AgentAvailable is Unknown after the last replica stopped (see ClusterController.withdraw) */
export const REASON_PROXY_STOPPED = 'ProxyStopped';

/**
 * The AgentAvailable a proxy that no longer serves leaves: Unknown, reason ProxyStopped, since no proxy will
 * carry the agent's requests and none can tell whether the agent runs. lastTransitionTime stays at when it
 * became True: a proxy that starts and finds the agent back returns it to True without a transition (see
 * setCondition). `why`: "the last replica stopped" (it says so on its way out), or that every replica's
 * Lease lapsed (found by a reader of the Leases).
 */
export function unserved(c: ClusterCondition, why: string, nowIso: string): ClusterCondition {
  return {
    ...c,
    status: 'Unknown',
    reason: REASON_PROXY_STOPPED,
    message: `No tower proxy serves this cluster: ${why}.`,
    lastUpdateTime: nowIso,
  };
}

/**
 * Adds or updates a condition; lastTransitionTime moves only when the status does. An empty reason is left
 * out. The one exception: AgentAvailable back to True after a stopped proxy's Unknown (a restart, its agent
 * back) keeps the time it last became True, since the agent's availability never changed, only whether a
 * proxy could tell.
 */
function setCondition(conditions: ClusterCondition[], c: Condition, nowMs: number): void {
  const now = new Date(nowMs).toISOString().replace(/\.\d+Z$/, 'Z');
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
  const resumed = had.status === 'Unknown' && had.reason === REASON_PROXY_STOPPED && c.status === 'True';
  if (had.status !== c.status && !resumed) had.lastTransitionTime = now;
  had.status = c.status;
  if (c.reason) had.reason = c.reason;
  else delete had.reason;
  had.message = c.message;
  had.lastUpdateTime = now;
}

/** An endpoint is filled when empty, or when it names an old ClusterIP of a recreated Service. */
export function staleEndpoint(url: string | undefined, clusterIP: string, service: V1Service): boolean {
  if (!url) return true;
  const h = hostOfUrl(url);
  if (!h || !isIP(h) || h === clusterIP) return false;
  // another address of the Service (a load balancer's, an external IP) stays; an old ClusterIP goes
  const lb = service.status?.loadBalancer?.ingress?.some((i) => i.ip === h) ?? false;
  return !lb && !(service.spec?.externalIPs ?? []).includes(h);
}

/** Why the stored kubeconfig must be rewritten, or undefined when it is still good. */
export function kubeconfigOutdated(
  b64: string | undefined,
  server: string | undefined,
  caPem: string,
  now: number,
  revoked?: (facts: CertificateFacts) => boolean,
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
        .trim() !== caPem.trim()
    )
      return 'it trusts another CA';
    const certPem = Buffer.from(doc?.users?.[0]?.user?.['client-certificate-data'] ?? '', 'base64').toString('utf8');
    const cert = new X509Certificate(certPem);
    if (Date.parse(cert.validTo) - now < KUBECONFIG_RENEW_BEFORE_MS) return 'its certificate nears expiry';
    if (!cert.checkIssued(new X509Certificate(caPem))) return "its certificate is not from tower's CA";
    if (revoked?.(x509Facts(cert))) return 'its certificate was revoked';
    return undefined;
  } catch {
    return 'it is unreadable';
  }
}

/**
 * What the proxy serves for a Cluster: its token, and its two ports with the names its certificate
 * carries, unless an older Cluster of ours has either port (then the gateway only, and that one's name).
 */
export function served(
  c: KubeCluster,
  others: KubeCluster[],
  service: V1Service,
  external: string | undefined,
): { cluster: Cluster; collidesWith?: string } {
  const name = c.metadata.name;
  const conn = c.spec!.connection!;
  const collision = others.find(
    (o) =>
      !notOurs(o) &&
      !specProblem(o) &&
      (o.spec?.connection?.kubernetesAPIServerPort === conn.kubernetesAPIServerPort ||
        o.spec?.connection?.kubesphereAPIServerPort === conn.kubesphereAPIServerPort) &&
      olderThan(o, c),
  );
  let serve: Cluster['serve'];
  if (!collision) {
    const svc = serviceName(name);
    const names = [`${svc}`, `${svc}.${NAMESPACE}`, `${svc}.${NAMESPACE}.svc`, `${svc}.${NAMESPACE}.svc.cluster.local`];
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
  return collision ? { cluster, collidesWith: collision.metadata.name } : { cluster };
}

/** What the proxy is told when `after` replaces what it was told before: a new token or new serving only. */
export function servedChange(before: Cluster | undefined, after: Cluster): 'added' | 'modified' | undefined {
  if (!before) return 'added';
  if (before.token !== after.token || JSON.stringify(before.serve) !== JSON.stringify(after.serve)) return 'modified';
  return undefined;
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
export function sameJson(a: unknown, b: unknown): boolean {
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
