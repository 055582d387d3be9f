/** What `tower install` prints: the objects that run tower in a host cluster and in a member cluster. */
import { KUBESPHERE_PORT_OFFSET, PORT_MAX, PORT_MIN } from './desired.ts';
import {
  AGENT_OWNED_LABELS,
  AGENT_POLICY_CONFIGMAP,
  GROUP,
  NAMESPACE,
  PLURAL,
  PROXY_OWNED_LABELS,
  REVOCATIONS_CONFIGMAP,
  VERSION,
} from './resource.ts';

type Obj = Record<string, unknown>;

const str = { type: 'string' };
const int = { type: 'integer' };
const bool = { type: 'boolean' };
const bytes = { type: 'string', format: 'byte' };
const time = { type: 'string', format: 'date-time' };

const AGENT_HEALTH_PORT = 8081;
const PROXY_AGENT_PORT = 8080;
const PROXY_GATEWAY_PORT = 6443;
/** the proxy's /metrics (and probes) on a port of its own, so that a NetworkPolicy can fence it alone */
const PROXY_METRICS_PORT = 8081;
/** the image's user and group (nonroot), and so the manifests' */
export const RUN_AS_ID = 65532;

/** the annotations Prometheus' Kubernetes pod discovery configurations commonly read */
function scrape(port: number): Record<string, string> {
  return { 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(port), 'prometheus.io/path': '/metrics' };
}

/** the KubeSphere release whose Cluster CRD tower prints (ks-core chart, ks-crds, appVersion v4.1.0) */
export const CRD_MATCHES_KUBESPHERE = 'v4.1.0';
/** marks a Cluster CRD that tower installed: any other one is left alone */
export const CRD_INSTALLED_BY = 'tower.kubesphere.io/installed-by';
export const CRD_KUBESPHERE_VERSION = 'tower.kubesphere.io/kubesphere-version';

/**
 * KubeSphere's Cluster CRD, field for field (its ks-crds chart): a structural schema, no status
 * subresource (tower writes status either way).
 */
export function clusterCrd(): Obj {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    // no tower labels: a label-based delete of tower's objects must never take every Cluster with it
    metadata: {
      name: `${PLURAL}.${GROUP}`,
      annotations: { [CRD_INSTALLED_BY]: 'tower', [CRD_KUBESPHERE_VERSION]: CRD_MATCHES_KUBESPHERE },
    },
    spec: {
      group: GROUP,
      names: { kind: 'Cluster', listKind: 'ClusterList', plural: PLURAL, singular: 'cluster' },
      scope: 'Cluster',
      versions: [
        {
          additionalPrinterColumns: [
            { jsonPath: '.spec.provider', name: 'Provider', type: 'string' },
            { jsonPath: '.status.kubernetesVersion', name: 'Version', type: 'string' },
          ],
          name: VERSION,
          schema: {
            openAPIV3Schema: {
              description: 'Cluster is the schema for the clusters API',
              type: 'object',
              properties: {
                apiVersion: str,
                kind: str,
                metadata: { type: 'object' },
                spec: {
                  type: 'object',
                  properties: {
                    config: bytes,
                    connection: {
                      type: 'object',
                      properties: {
                        externalKubernetesAPIEndpoint: str,
                        kubeconfig: bytes,
                        kubernetesAPIEndpoint: str,
                        kubernetesAPIServerPort: int,
                        kubesphereAPIEndpoint: str,
                        kubesphereAPIServerPort: int,
                        token: str,
                        type: str,
                      },
                    },
                    enable: bool,
                    externalKubeAPIEnabled: bool,
                    joinFederation: bool,
                    provider: str,
                  },
                },
                status: {
                  type: 'object',
                  properties: {
                    conditions: {
                      type: 'array',
                      items: {
                        type: 'object',
                        required: ['status', 'type'],
                        properties: {
                          lastTransitionTime: time,
                          lastUpdateTime: time,
                          message: str,
                          reason: str,
                          status: str,
                          type: str,
                        },
                      },
                    },
                    configz: { type: 'object', additionalProperties: bool },
                    kubeSphereVersion: str,
                    kubernetesVersion: str,
                    nodeCount: int,
                    region: str,
                    uid: str,
                    zones: { type: 'array', items: str },
                  },
                },
              },
            },
          },
          served: true,
          storage: true,
          subresources: {},
        },
      ],
    },
  };
}

/** KubeSphere's namespace, which tower shares: without tower's labels, so that no uninstall deletes it */
export function namespace(): Obj {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NAMESPACE } };
}

/**
 * What the pods may use: KubeSphere runs its Go tower under 256 MiB (proxy) and 200 MB (agent). Measured on a
 * real node by test/cluster (npm run test:cluster), which fails when either peaks over its limit.
 */
const PROXY_MEMORY_LIMIT = '256Mi';
const AGENT_MEMORY_LIMIT = '192Mi';

const TOWER_LABELS = { 'app.kubernetes.io/name': 'tower', app: 'tower' };
/** the objects' own labels (selectors keep TOWER_LABELS: a Deployment's cannot change) */
const PROXY_META = { ...TOWER_LABELS, ...PROXY_OWNED_LABELS };

/**
 * Pod Security "restricted" (Kubernetes' Pod Security Standards): a fixed non-root user, RuntimeDefault seccomp,
 * and in the container no privilege escalation, no capabilities, a read-only root filesystem.
 */
function restrictedPod(): Obj {
  return {
    runAsNonRoot: true,
    runAsUser: RUN_AS_ID,
    runAsGroup: RUN_AS_ID,
    fsGroup: RUN_AS_ID,
    seccompProfile: { type: 'RuntimeDefault' },
  };
}

function restrictedContainer(): Obj {
  return {
    runAsNonRoot: true,
    allowPrivilegeEscalation: false,
    capabilities: { drop: ['ALL'] },
    readOnlyRootFilesystem: true,
    seccompProfile: { type: 'RuntimeDefault' },
  };
}

/**
 * Several replicas: on different nodes (and zones) where the cluster has them, and scheduled anyway where it has
 * not, so that one node going takes one replica.
 */
function spread(labels: Record<string, string>): Obj {
  const selector = { matchLabels: { ...labels } };
  return {
    affinity: {
      podAntiAffinity: {
        preferredDuringSchedulingIgnoredDuringExecution: [
          { weight: 100, podAffinityTerm: { labelSelector: selector, topologyKey: 'kubernetes.io/hostname' } },
        ],
      },
    },
    topologySpreadConstraints: ['kubernetes.io/hostname', 'topology.kubernetes.io/zone'].map((topologyKey) => ({
      maxSkew: 1,
      topologyKey,
      whenUnsatisfiable: 'ScheduleAnyway',
      labelSelector: selector,
    })),
  };
}

/** Who may scrape /metrics: pods of the namespaces matching a label selector, optionally only some of their pods. */
export interface MetricsFence {
  namespaces: Record<string, string>;
  pods?: Record<string, string>;
}

/**
 * A NetworkPolicy that admits `open` ports from anywhere and `metricsPort` only from the fence's pods.
 * A policy isolates a pod on every port, so each port that must stay open is listed.
 */
function metricsPolicy(
  name: string,
  labels: Record<string, string>,
  meta: Record<string, string>,
  metricsPort: number,
  open: Obj[],
  fence: MetricsFence,
): Obj {
  const peer: Obj = { namespaceSelector: { matchLabels: fence.namespaces } };
  if (fence.pods) peer.podSelector = { matchLabels: fence.pods };
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name, namespace: NAMESPACE, labels: meta },
    spec: {
      podSelector: { matchLabels: { ...labels } },
      policyTypes: ['Ingress'],
      ingress: [
        ...(open.length > 0 ? [{ ports: open }] : []),
        { from: [peer], ports: [{ protocol: 'TCP', port: metricsPort }] },
      ],
    },
  };
}
const SHUTDOWN_DELAY_S = 5;
const SHUTDOWN_GRACE_S = 25;

export interface ProxyInstall {
  image: string;
  replicas: number;
  publishServiceAddress: string;
  serviceType: string;
  /** policy/v1, or policy/v1beta1 for Kubernetes before 1.21 */
  pdbApiVersion: PdbApiVersion;
  /** add a NetworkPolicy: /metrics only from these (needs NetworkPolicy endPort, Kubernetes 1.22) */
  metricsFence?: MetricsFence;
  /** shared with KubeSphere, so only on request: the Cluster CRD, the namespace */
  withCrd?: boolean;
  withNamespace?: boolean;
}

export type PdbApiVersion = 'policy/v1' | 'policy/v1beta1';

/** the PodDisruptionBudget's group version on Kubernetes 1.<minor> (policy/v1 is served from 1.21) */
export function pdbApiVersionFor(minor: number): PdbApiVersion {
  return minor >= 21 ? 'policy/v1' : 'policy/v1beta1';
}

/** Host side: the CRD, RBAC limited to what the proxy touches, the Deployment and the agents' Service. */
export function proxyManifests(p: ProxyInstall): Obj[] {
  // unready for 5 s before it stops taking connections: the readiness probe (every 2 s) and the
  // Service's endpoints catch up meanwhile
  const args = [
    'proxy',
    `--port=${PROXY_AGENT_PORT}`,
    `--gateway-port=${PROXY_GATEWAY_PORT}`,
    `--metrics-port=${PROXY_METRICS_PORT}`,
    `--publish-service-address=${p.publishServiceAddress}`,
    `--shutdown-delay=${SHUTDOWN_DELAY_S}s`,
    `--shutdown-grace=${SHUTDOWN_GRACE_S}s`,
  ];
  if (p.replicas > 1) args.push('--leader-elect');
  return [
    ...(p.withCrd ? [clusterCrd()] : []),
    ...(p.withNamespace ? [namespace()] : []),
    {
      apiVersion: 'v1',
      kind: 'ServiceAccount',
      metadata: { name: 'tower', namespace: NAMESPACE, labels: PROXY_META },
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: 'tower', labels: PROXY_META },
      rules: [
        { apiGroups: [GROUP], resources: [PLURAL], verbs: ['get', 'list', 'watch', 'update'] },
        { apiGroups: [GROUP], resources: [`${PLURAL}/status`], verbs: ['update'] },
        { apiGroups: [''], resources: ['namespaces'], resourceNames: [NAMESPACE], verbs: ['get'] },
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: 'tower', labels: PROXY_META },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'tower' },
      subjects: [{ kind: 'ServiceAccount', name: 'tower', namespace: NAMESPACE }],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: { name: 'tower', namespace: NAMESPACE, labels: PROXY_META },
      rules: [
        { apiGroups: [''], resources: ['services'], verbs: ['get', 'list', 'watch', 'create', 'update', 'delete'] },
        // create cannot be limited by name; reading is
        { apiGroups: [''], resources: ['secrets'], verbs: ['create'] },
        { apiGroups: [''], resources: ['secrets'], resourceNames: ['tower-ca', 'tower-ssh-host-key'], verbs: ['get'] },
        { apiGroups: [''], resources: ['configmaps'], verbs: ['create'] },
        { apiGroups: [''], resources: ['configmaps'], resourceNames: ['tower-proxy'], verbs: ['get', 'update'] },
        // tower revoke writes the list with the user's own rights; the proxy only reads it
        { apiGroups: [''], resources: ['configmaps'], resourceNames: [REVOCATIONS_CONFIGMAP], verbs: ['get'] },
        // the writers' Lease tower, and one Lease tower-proxy-<pod> per replica (names unknown in advance)
        {
          apiGroups: ['coordination.k8s.io'],
          resources: ['leases'],
          verbs: ['get', 'list', 'watch', 'create', 'update', 'delete'],
        },
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: 'tower', namespace: NAMESPACE, labels: PROXY_META },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'tower' },
      subjects: [{ kind: 'ServiceAccount', name: 'tower', namespace: NAMESPACE }],
    },
    {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'tower', namespace: NAMESPACE, labels: PROXY_META },
      spec: {
        replicas: p.replicas,
        selector: { matchLabels: TOWER_LABELS },
        // a new replica serves before an old one drains
        strategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
        template: {
          metadata: { labels: TOWER_LABELS, annotations: scrape(PROXY_METRICS_PORT) },
          spec: {
            serviceAccountName: 'tower',
            terminationGracePeriodSeconds: SHUTDOWN_DELAY_S + SHUTDOWN_GRACE_S + 5,
            securityContext: restrictedPod(),
            ...(p.replicas > 1 ? spread(TOWER_LABELS) : {}),
            containers: [
              {
                name: 'proxy',
                image: p.image,
                command: ['/tower'],
                args,
                // the replica's id (its Lease) and where the other replicas reach its gateway
                env: [
                  { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                  { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
                ],
                ports: [
                  { name: 'agents', containerPort: PROXY_AGENT_PORT },
                  { name: 'gateway', containerPort: PROXY_GATEWAY_PORT },
                  { name: 'metrics', containerPort: PROXY_METRICS_PORT },
                ],
                // the agent port's probes: what agents and the Service depend on
                livenessProbe: {
                  httpGet: { path: '/livez', port: PROXY_AGENT_PORT },
                  periodSeconds: 10,
                  failureThreshold: 6,
                },
                // every replica is ready while it serves; a draining one fails at once
                readinessProbe: {
                  httpGet: { path: '/readyz', port: PROXY_AGENT_PORT },
                  periodSeconds: 2,
                  failureThreshold: 1,
                },
                resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: PROXY_MEMORY_LIMIT } },
                securityContext: restrictedContainer(),
                // the one writable place: the native crypto binding is written here once and loaded
                volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }],
              },
            ],
            volumes: [{ name: 'tmp', emptyDir: { sizeLimit: '64Mi' } }],
          },
        },
      },
    },
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'tower', namespace: NAMESPACE, labels: PROXY_META },
      spec: {
        type: p.serviceType,
        selector: TOWER_LABELS,
        // agents must reach every replica: each new connection may go to any of them
        sessionAffinity: 'None',
        ports: [
          { name: 'agents', protocol: 'TCP', port: PROXY_AGENT_PORT, targetPort: PROXY_AGENT_PORT },
          { name: 'gateway', protocol: 'TCP', port: PROXY_GATEWAY_PORT, targetPort: PROXY_GATEWAY_PORT },
        ],
      },
    },
    ...(p.metricsFence
      ? [
          metricsPolicy(
            'tower',
            TOWER_LABELS,
            PROXY_META,
            PROXY_METRICS_PORT,
            [
              { protocol: 'TCP', port: PROXY_AGENT_PORT },
              { protocol: 'TCP', port: PROXY_GATEWAY_PORT },
              // each cluster's own ports (its mc-<name> Service): Kubernetes API, then ks-apiserver
              { protocol: 'TCP', port: PORT_MIN, endPort: PORT_MAX },
              {
                protocol: 'TCP',
                port: PORT_MIN + KUBESPHERE_PORT_OFFSET,
                endPort: PORT_MAX + KUBESPHERE_PORT_OFFSET,
              },
            ],
            p.metricsFence,
          ),
        ]
      : []),
    ...(p.replicas > 1
      ? [
          {
            apiVersion: p.pdbApiVersion,
            kind: 'PodDisruptionBudget',
            metadata: { name: 'tower', namespace: NAMESPACE, labels: PROXY_META },
            spec: { maxUnavailable: 1, selector: { matchLabels: TOWER_LABELS } },
          },
        ]
      : []),
  ];
}

export interface AgentInstall {
  image: string;
  name: string;
  token: string;
  proxyServer: string;
  proxyFingerprint?: string;
  /** connect to a proxy nothing verifies */
  insecureSkipProxyVerification?: boolean;
  kubesphereService: string;
  /**
   * bind cluster-admin (a Go proxy, or --gateway-identity agent, acts with the agent's own rights)
   * instead of impersonation only
   */
  clusterAdmin?: boolean;
  /** add a NetworkPolicy: the health port (/metrics) only from these */
  metricsFence?: MetricsFence;
  /** the namespace, shared with KubeSphere: only on request */
  withNamespace?: boolean;
  /** a member policy (YAML) for the agent to enforce, as ConfigMap tower-agent-policy that only the agent reads */
  policy?: string;
}

/**
 * What a tower proxy needs of the agent's ServiceAccount: act as the gateway's users, and ask whether
 * they may impersonate.
 */
export const AGENT_IMPERSONATOR_RULES = [
  { apiGroups: [''], resources: ['users', 'groups', 'serviceaccounts'], verbs: ['impersonate'] },
  { apiGroups: ['authentication.k8s.io'], resources: ['userextras', 'uids'], verbs: ['impersonate'] },
  { apiGroups: ['authorization.k8s.io'], resources: ['subjectaccessreviews'], verbs: ['create'] },
];

/**
 * Member side: a ServiceAccount that may impersonate (the gateway acts as each user's certificate;
 * with clusterAdmin, bound to cluster-admin as KubeSphere's agent is), the token as a Secret, the Deployment.
 */
export function agentManifests(a: AgentInstall): Obj[] {
  const labels = { 'app.kubernetes.io/name': 'tower-agent', app: 'tower-agent' };
  const meta = { ...labels, ...AGENT_OWNED_LABELS };
  const args = [
    'agent',
    `--name=${a.name}`,
    `--proxy-server=${a.proxyServer}`,
    '--keepalive=10s',
    `--kubesphere-service=${a.kubesphereService}`,
    '--kubernetes-service=kubernetes.default.svc:443',
    `--health-port=${AGENT_HEALTH_PORT}`,
  ];
  if (a.proxyFingerprint) args.push(`--proxy-fingerprint=${a.proxyFingerprint}`);
  if (a.insecureSkipProxyVerification) args.push('--insecure-skip-proxy-verification');
  if (a.policy !== undefined) args.push(`--policy-configmap=${AGENT_POLICY_CONFIGMAP}`);
  const role = a.clusterAdmin ? 'cluster-admin' : 'tower-agent';
  return [
    ...(a.withNamespace ? [namespace()] : []),
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'tower-agent', namespace: NAMESPACE, labels: meta } },
    ...(a.clusterAdmin
      ? []
      : [
          {
            apiVersion: 'rbac.authorization.k8s.io/v1',
            kind: 'ClusterRole',
            metadata: { name: 'tower-agent', labels: meta },
            rules: AGENT_IMPERSONATOR_RULES,
          },
        ]),
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      // named after what it grants: a binding's roleRef cannot change, so a switch between the two is a new binding
      // (and the old one a kubectl delete), never an apply that fails half-way and leaves cluster-admin bound
      metadata: { name: a.clusterAdmin ? 'tower-agent-cluster-admin' : 'tower-agent', labels: meta },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role },
      subjects: [{ kind: 'ServiceAccount', name: 'tower-agent', namespace: NAMESPACE }],
    },
    {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'tower-agent', namespace: NAMESPACE, labels: meta },
      type: 'Opaque',
      stringData: { token: a.token },
    },
    {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'tower-agent', namespace: NAMESPACE, labels: meta },
      spec: {
        replicas: 1,
        selector: { matchLabels: labels },
        template: {
          metadata: { labels, annotations: scrape(AGENT_HEALTH_PORT) },
          spec: {
            serviceAccountName: 'tower-agent',
            securityContext: restrictedPod(),
            containers: [
              {
                name: 'agent',
                image: a.image,
                command: ['/tower'],
                args,
                // the token stays out of the pod spec and ps
                env: [{ name: 'TOWER_TOKEN', valueFrom: { secretKeyRef: { name: 'tower-agent', key: 'token' } } }],
                ports: [{ name: 'health', containerPort: AGENT_HEALTH_PORT }],
                livenessProbe: {
                  httpGet: { path: '/livez', port: AGENT_HEALTH_PORT },
                  periodSeconds: 10,
                  failureThreshold: 6,
                },
                // ready while connected to the proxy: `kubectl get pods` shows a disconnected agent
                readinessProbe: { httpGet: { path: '/readyz', port: AGENT_HEALTH_PORT }, periodSeconds: 10 },
                resources: { requests: { cpu: '50m', memory: '96Mi' }, limits: { memory: AGENT_MEMORY_LIMIT } },
                securityContext: restrictedContainer(),
                // the one writable place: the native crypto binding is written here once and loaded
                volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }],
              },
            ],
            volumes: [{ name: 'tmp', emptyDir: { sizeLimit: '64Mi' } }],
          },
        },
      },
    },
    ...(a.policy !== undefined ? policyObjects(a.policy, meta) : []),
    // the agent only dials out: its health port is all it listens on
    ...(a.metricsFence ? [metricsPolicy('tower-agent', labels, meta, AGENT_HEALTH_PORT, [], a.metricsFence)] : []),
  ];
}

/** The member policy as a ConfigMap, and the right to read that one ConfigMap (the agent's only right there). */
function policyObjects(policy: string, meta: Record<string, string>): Obj[] {
  const name = AGENT_POLICY_CONFIGMAP;
  return [
    {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name, namespace: NAMESPACE, labels: meta },
      data: { 'policy.yaml': policy },
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: { name, namespace: NAMESPACE, labels: meta },
      rules: [{ apiGroups: [''], resources: ['configmaps'], resourceNames: [name], verbs: ['get'] }],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name, namespace: NAMESPACE, labels: meta },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name },
      subjects: [{ kind: 'ServiceAccount', name: 'tower-agent', namespace: NAMESPACE }],
    },
  ];
}
