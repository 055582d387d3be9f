import { isIP } from 'node:net';
import { opt, registerOptionNames, type Specs } from './loader.ts';
import { VERSION } from '../version.ts';
import { rfc3339, serialProblem, serverIdProblem } from './names.ts';

/**
 * The option tables of every subcommand: the one place that says what each accepts, its default
 * and its help, from which the commands' flags, `--help` and the README's flag tables are made.
 */

const port = (v: number) => (v >= 0 && v <= 65535 ? undefined : 'a port is 1-65535 (or 0 for any free one)');
const nonNegative = (v: number) => (v >= 0 ? undefined : 'must not be negative');
const positive = (v: number) => (v > 0 ? undefined : 'must be more than 0');
const address = (v: string) =>
  v === '' || (/\s|\/|^:|:$/.test(v) && !isIP(v)) ? 'want a host name or IP address (no scheme, no port)' : undefined;
const oneOf =
  (...values: string[]) =>
  (v: string) =>
    values.includes(v) ? undefined : `use ${values.slice(0, -1).join(', ')} or ${values.at(-1)}`;

/** Every command takes these. */
export const COMMON = {
  v: opt.int({
    help: "Log verbosity, 0-10; 2 prints where each option's value came from, 4 every request",
    value: 'N',
    short: 'v',
    default: 0,
    check: (v) => (v >= 0 && v <= 10 ? undefined : 'verbosity is 0-10'),
  }),
  logFormat: opt.string({
    help: 'Log format: text or json',
    value: 'FORMAT',
    default: 'text',
    check: oneOf('text', 'json'),
  }),
  config: opt.string({
    help: 'YAML file of options: keys are flag names, a section per subcommand overrides the top level',
    value: 'FILE',
    defaultText: 'env TOWER_CONFIG',
  }),
};

const DATA_DIR = {
  dataDir: opt.string({
    help: "Directory of the file store: clusters, CA, host key, the proxy's record",
    value: 'DIR',
    defaultText: '~/.tower (env TOWER_HOME)',
    alsoEnv: 'TOWER_HOME',
  }),
};
/** where clusters are registered: files in the data dir, or KubeSphere's Cluster resources in a host cluster */
const STORE = {
  ...DATA_DIR,
  store: opt.string({
    help: "Cluster registry: file (the data dir) or kubernetes (KubeSphere's Cluster resources)",
    value: 'KIND',
    defaultText: 'kubernetes with --kubeconfig or in a pod, else file',
    check: oneOf('file', 'kubernetes'),
  }),
  kubeconfig: opt.string({ help: "The host cluster's kubeconfig: Kubernetes mode", value: 'FILE' }),
};
const CA = {
  caCert: opt.string({
    help:
      'CA certificate (PEM, RSA or ECDSA) for issuing and verifying certificates; the public KubeSphere CA, ' +
      'whose key is published, is refused',
    value: 'FILE',
    defaultText: "tower's own CA in the store",
  }),
  caKey: opt.string({ help: 'Private key (PEM) of --ca-cert', value: 'FILE' }),
};

export const PROXY_OPTIONS = {
  ...COMMON,
  ...STORE,
  ...CA,
  host: opt.string({
    help: 'Address to listen on, for agents and the gateway',
    value: 'ADDRESS',
    default: '0.0.0.0',
    check: address,
  }),
  port: opt.int({
    help:
      'Agent port: HTTP upgraded to WebSocket (kubesphere-v1), and /livez, /readyz, /metrics, /health, ' +
      '/version; 0 picks a free one',
    value: 'PORT',
    default: 8080,
    check: port,
  }),
  gatewayPort: opt.int({
    help: "HTTPS cluster gateway: /clusters/NAME/... to that member's kube-apiserver; 0 picks a free one",
    value: 'PORT',
    default: 6443,
    check: port,
  }),
  metricsPort: opt.int({
    help:
      'Serve /livez, /readyz and /metrics on this port too, and /metrics no longer on the agent port (so that a ' +
      'NetworkPolicy can fence it); 0 picks a free one',
    value: 'PORT',
    defaultText: 'off',
    check: port,
  }),
  publishServiceAddress: opt.string({
    help:
      'Host name or IP that agents and users reach the proxy at; put in certificates, kubeconfigs and join ' +
      'commands',
    value: 'ADDRESS',
    default: '127.0.0.1',
    check: address,
  }),
  gatewayIdentity: opt.string({
    help:
      'Who gateway requests act as in the member: certificate (its CN as user and each O as group, by ' +
      "impersonation) or agent (the agent's own rights, as the Go tower; a warning at start)",
    value: 'WHO',
    default: 'certificate',
    check: oneOf('certificate', 'agent'),
  }),
  allowUnboundCertificates: opt.bool({
    help: 'Let the shared gateway serve client certificates that name no cluster (tower kubeconfig always names one)',
    default: false,
  }),
  requestTimeout: opt.duration({
    help:
      "How long a request waits for the member's response headers before a 504; watches and streams run on once " +
      'they start; 0: no limit',
    default: 60_000,
    check: nonNegative,
  }),
  maxRequestsInflight: opt.int({
    help: 'Requests in flight per cluster, watches and streams not counted; more are answered 429 with Retry-After',
    default: 1_000,
    check: positive,
  }),
  maxStalledMemory: opt.size({
    help:
      'Memory that answers whose clients stopped reading may hold in the proxy, in all (each at most its SSH ' +
      'window, 2 MiB, and 192 KiB of buffers; channels opened once half of it is held get 256 KiB windows); once ' +
      'they hold this much, new requests and upgrades are answered 429 with Retry-After. A size such as 64Mi or 200M',
    default: 64 * 2 ** 20,
    check: positive,
  }),
  gatewayMaxConnections: opt.int({
    help: 'Connections the gateway (and each cluster port) holds at once; more are closed at once',
    default: 10_000,
    check: positive,
  }),
  gatewayMaxConnectionsPerAddress: opt.int({ help: 'The same, per client address', default: 1_000, check: positive }),
  accessLog: opt.bool({
    help: 'One log line per gateway request: its Audit-ID, cluster, user, groups, verb, resource, status, duration',
    default: false,
  }),
  agentTls: opt.bool({
    help: "Serve TLS (wss://) on the agent port, with a certificate from tower's CA for the names the gateway has",
    default: false,
  }),
  agentTlsCert: opt.string({ help: 'Serve TLS on the agent port with this certificate (PEM) instead', value: 'FILE' }),
  agentTlsKey: opt.string({ help: 'Private key (PEM) of --agent-tls-cert', value: 'FILE' }),
  leaderElect: opt.bool({
    help:
      'Kubernetes mode: only the holder of Lease kubesphere-system/tower writes the Clusters (ports, Services, ' +
      'kubeconfigs, conditions); every replica serves agents, the gateway and the cluster ports either way',
    default: false,
  }),
  // the Go tower's (client-go's) times
  leaderElectLeaseDuration: opt.duration({
    help: 'How long the lease holds after its last renewal',
    default: 30_000,
    check: positive,
  }),
  leaderElectRenewDeadline: opt.duration({
    help: 'The leader steps down (and serves on, campaigning again) when it could not renew for this long',
    default: 15_000,
    check: positive,
  }),
  leaderElectRetryPeriod: opt.duration({
    help: 'Between attempts to take or renew the lease',
    default: 5_000,
    check: positive,
  }),
  serverId: opt.string({
    help: "This replica's id: its Lease tower-proxy-ID in kubesphere-system, and what agents hold a session to",
    value: 'ID',
    defaultText: 'the pod name (env POD_NAME), else the host name',
    check: (v) => serverIdProblem(v),
  }),
  advertiseAddress: opt.string({
    help: "Address the other replicas reach this one's gateway port at (peers forward requests there)",
    value: 'ADDRESS',
    defaultText: 'env POD_IP, else --host unless it is a wildcard, else the host name',
    check: address,
  }),
  serverLeaseDuration: opt.duration({
    help:
      'Kubernetes mode: a replica whose Lease was not renewed for this long is gone (agents drop it, peers stop ' +
      'forwarding to it)',
    default: 30_000,
    check: positive,
  }),
  serverLeaseRenewPeriod: opt.duration({
    help: "Between renewals of this replica's Lease",
    default: 10_000,
    check: positive,
  }),
  shutdownDelay: opt.duration({
    help:
      'On SIGTERM, how long the replica keeps serving while unready, so that load balancers stop sending to it ' +
      'first (tower install sets 5s)',
    default: 0,
    check: nonNegative,
  }),
  shutdownGrace: opt.duration({
    help:
      'Then how long requests in flight, exec and port-forward sessions get to finish; watches are handed back ' +
      'at once',
    default: 25_000,
    check: nonNegative,
  }),
} satisfies Specs;

const PROXY_FINGERPRINT = opt.string({
  help:
    "SHA256 fingerprint of the proxy's SSH host key, as the join command carries it; any other key is refused. " +
    'Required unless the proxy is https://',
  value: 'SHA256:...',
  check: (v) =>
    /^SHA256:[A-Za-z0-9+/]{43}$/.test(v)
      ? undefined
      : 'want SHA256: and 43 base64 characters, as `tower token` prints it',
});
const NAME = opt.string({ help: 'The cluster name given to tower token (required)', value: 'NAME' });
const TOKEN = opt.string({
  help: "The cluster's token (required; env TOWER_TOKEN keeps it out of ps)",
  value: 'TOKEN',
});
const KUBESPHERE_SERVICE = opt.string({
  help: 'host:port of the member ks-apiserver',
  value: 'HOST:PORT',
  default: 'ks-apiserver.kubesphere-system.svc:80',
});
const INSECURE = opt.bool({
  help:
    "Connect to a proxy that nothing verifies (http://, no fingerprint): whoever answers gets this cluster's " +
    'requests; a warning at start and at every connection',
  default: false,
});

export const AGENT_OPTIONS = {
  ...COMMON,
  name: NAME,
  token: TOKEN,
  proxyServer: opt.string({
    help: "The proxy's agent port; http becomes ws, https wss; HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured",
    value: 'URL',
    default: 'http://127.0.0.1:8080',
  }),
  proxyFingerprint: PROXY_FINGERPRINT,
  proxyCa: opt.string({
    help:
      "CA bundle (PEM) that verifies an https:// (wss://) proxy's certificate, e.g. the proxy's ca.crt with " +
      '--agent-tls',
    value: 'FILE',
    defaultText: "the system's roots",
  }),
  insecureSkipProxyVerification: INSECURE,
  kubeconfig: opt.string({
    help: "The member's kubeconfig (current context; a client certificate or a token)",
    value: 'FILE',
    defaultText: "the pod's service account",
  }),
  kubernetesService: opt.string({
    help: 'host:port of the member kube-apiserver',
    value: 'HOST:PORT',
    defaultText: "the kubeconfig's server, or KUBERNETES_SERVICE_HOST:PORT in a pod",
  }),
  kubesphereService: KUBESPHERE_SERVICE,
  keepalive: opt.duration({
    help: 'Ping interval; a proxy that does not answer is dropped and redialed; 0 disables',
    default: 60_000,
    check: nonNegative,
  }),
  maxRetry: opt.int({
    help: 'Failed attempts in a row before the agent exits 1; 0: never give up',
    default: 0,
    check: nonNegative,
  }),
  maxRetryInterval: opt.duration({
    help:
      'Longest wait between attempts (jittered exponential backoff from 1s), so that agents are back soon after ' +
      'any outage',
    default: 30_000,
    check: nonNegative,
  }),
  tlsAtAgent: opt.bool({
    help:
      'When the proxy offers it, make the TLS to the kube-apiserver here: the client key never leaves the ' +
      'member; --no-tls-at-agent behaves as Go agents do',
    default: true,
  }),
  maxChannels: opt.int({
    help: 'Channels the proxy may hold open at once through this agent; more are refused',
    default: 4096,
    check: positive,
  }),
  maxStalledMemory: opt.size({
    help:
      'Memory that answers the tunnel cannot take (their clients stopped reading) may hold in the agent, in all ' +
      '(192 KiB each); once they hold this much, the agent answers requests 429 itself instead of forwarding them. ' +
      'A size such as 24Mi or 25M',
    default: 24 * 2 ** 20,
    check: positive,
  }),
  policy: opt.string({
    help:
      'A member policy (YAML, kind MemberPolicy; see docs/member-policy.md) that the agent enforces on every ' +
      'request before it reaches the kube-apiserver; re-read every 2s, and every request is refused while it is ' +
      'missing or malformed',
    value: 'FILE',
    defaultText: 'none',
  }),
  policyConfigmap: opt.string({
    help:
      "As --policy, from the key policy.yaml of a ConfigMap in the member, read with the agent's own " +
      "credentials; the namespace defaults to the pod's",
    value: '[NAMESPACE/]NAME',
    defaultText: 'none',
  }),
  recordExec: opt.string({
    help:
      'Record every exec and attach session in this directory: what it printed, as asciicast v2 files ' +
      '(`asciinema play FILE`) with the user, pod, container, command and Audit-ID; never deleted here',
    value: 'DIR',
    defaultText: 'off',
  }),
  recordStdin: opt.bool({
    help: 'With --record-exec: record what was typed too (passwords included)',
    default: false,
  }),
  recordFailure: opt.string({
    help:
      'With --record-exec, a session that cannot be recorded: closed refuses it (403) or ends it; open lets it ' +
      'go on unrecorded, said in the log',
    value: 'MODE',
    default: 'closed',
    check: oneOf('closed', 'open'),
  }),
  recordMaxBytes: opt.size({
    help:
      'With --record-exec: what the files in its directory may hold in all; past it, sessions are not recorded ' +
      '(see --record-failure). A size such as 1Gi',
    default: 2 ** 30,
    check: positive,
  }),
  healthPort: opt.int({
    help: 'Serve /livez, /readyz (connected to a proxy) and /metrics on this port; 0 picks a free one',
    value: 'PORT',
    defaultText: 'off',
    check: port,
  }),
  healthHost: opt.string({ help: 'Address for --health-port', value: 'ADDRESS', default: '0.0.0.0', check: address }),
} satisfies Specs;

const OUTPUT = (values: string[], def: string) =>
  opt.string({
    help: `Output format: ${values.join(', ')}`,
    value: 'FORMAT',
    short: 'o',
    default: def,
    check: oneOf(...values),
  });

export const TOKEN_OPTIONS = {
  ...COMMON,
  ...STORE,
  rotate: opt.bool({
    help: 'Issue a new token; a running proxy closes the sessions that used the old one',
    default: false,
  }),
  proxyServer: opt.string({
    help: 'Agent endpoint to print in the join command',
    value: 'URL',
    defaultText: 'what the proxy recorded',
  }),
  timeout: opt.duration({
    help: 'Kubernetes mode: how long to wait for the proxy to fill in the token',
    default: 60_000,
    check: positive,
  }),
} satisfies Specs;

export const KUBECONFIG_OPTIONS = {
  ...COMMON,
  ...STORE,
  ...CA,
  user: opt.string({
    help: "User name: the certificate's CN, whom requests act as in the member",
    value: 'NAME',
    default: 'tower-admin',
    check: (v) => (v.trim() && v === v.trim() ? undefined : 'must not be empty nor start or end with spaces'),
  }),
  group: opt.string({
    help: "Groups: the certificate's O, comma-separated for several",
    value: 'GROUPS',
    default: 'system:masters',
  }),
  ttl: opt.duration({
    help: "How long the client certificate lives (never beyond the CA's); the kubeconfig says when it expires",
    default: 24 * 3_600_000,
    check: (v) => (v >= 60_000 && v <= 87_600 * 3_600_000 ? undefined : 'between 1m and 87600h (ten years)'),
  }),
  server: opt.string({
    help: 'Gateway URL to put in the kubeconfig',
    value: 'URL',
    defaultText: 'what the proxy recorded, plus /clusters/NAME',
    check: (v) => (/^https:\/\/[^/]/.test(v) ? undefined : 'want an https:// URL'),
  }),
  gateway: opt.bool({
    help:
      "Kubernetes mode: issue a kubeconfig for the gateway instead of printing the Cluster's (implied by --user, " +
      '--group and --ttl)',
    default: false,
  }),
  timeout: opt.duration({
    help: "Kubernetes mode: how long to wait for an agent and the Cluster's kubeconfig",
    default: 60_000,
    check: positive,
  }),
} satisfies Specs;

export const REVOKE_OPTIONS = {
  ...COMMON,
  ...STORE,
  user: opt.string({
    help: 'Revoke every certificate of this user (its CN) issued until now; later ones are good',
    value: 'NAME',
    check: (v) => (v.trim() && !/[\x00-\x1f\x7f]/.test(v) ? undefined : 'want a user name'),
  }),
  serial: opt.string({
    help: 'Revoke the certificate with this serial number (hex, as tower kubeconfig and openssl print it)',
    value: 'HEX',
    check: serialProblem,
  }),
  issuedBefore: opt.string({
    help: 'Revoke every certificate issued before this time (RFC 3339, e.g. 2026-01-31T12:00:00Z)',
    value: 'TIME',
    check: (v) =>
      rfc3339(v) === undefined ? 'want an RFC 3339 time with its offset, such as 2026-01-31T12:00:00Z' : undefined,
  }),
  all: opt.bool({
    help: 'Revoke every certificate issued until now (the same as --issued-before now)',
    default: false,
  }),
  list: opt.bool({
    help: 'Print what is revoked, and change nothing',
    default: false,
  }),
} satisfies Specs;

export const CLUSTERS_OPTIONS = {
  ...COMMON,
  ...STORE,
  output: OUTPUT(['table', 'wide', 'json', 'yaml'], 'table'),
} satisfies Specs;

export const DELETE_OPTIONS = {
  ...COMMON,
  ...STORE,
} satisfies Specs;

export const VERSION_OPTIONS = {
  ...COMMON,
  output: OUTPUT(['text', 'json'], 'text'),
} satisfies Specs;

const IMAGE = {
  image: opt.string({
    help: 'Container image with the binary at /tower',
    value: 'IMAGE',
    default: `tower:${VERSION}`,
    check: (v) => (/^\S+$/.test(v) ? undefined : 'want an image reference such as registry.example/tower:1.0'),
  }),
};

/** `key=value,key=value`: what a NetworkPolicy's matchLabels can say */
export function parseLabelSelector(v: string): Record<string, string> | undefined {
  const labels: Record<string, string> = {};
  for (const part of v.split(',')) {
    const m = /^\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*=\s*([-A-Za-z0-9_.]*)\s*$/.exec(part);
    if (!m) return undefined;
    labels[m[1]!] = m[2]!;
  }
  return labels;
}

const selector = (v: string) =>
  parseLabelSelector(v) ? undefined : 'want labels such as kubernetes.io/metadata.name=monitoring (key=value,...)';

const METRICS_FENCE = {
  metricsFromNamespaces: opt.string({
    help:
      'Add a NetworkPolicy that lets only pods of the namespaces with these labels reach /metrics (other ports ' +
      'stay open)',
    value: 'KEY=VALUE,...',
    check: selector,
  }),
  metricsFromPods: opt.string({
    help: 'With --metrics-from-namespaces: only the pods with these labels there',
    value: 'KEY=VALUE,...',
    check: selector,
  }),
};

const WITH_NAMESPACE = {
  withNamespace: opt.bool({
    help: "Include the namespace kubesphere-system (KubeSphere's, so left out unless asked; no uninstall deletes it)",
    default: false,
  }),
};

export const INSTALL_CRD_OPTIONS = {
  ...COMMON,
  ...WITH_NAMESPACE,
  kubeconfig: opt.string({
    help: 'The host cluster (required), checked for a Cluster CRD that tower did not install (then refused)',
    value: 'FILE',
  }),
} satisfies Specs;

export const INSTALL_PROXY_OPTIONS = {
  ...COMMON,
  ...IMAGE,
  withCrd: opt.bool({
    help:
      "Include KubeSphere's Cluster CRD, for a host without KubeSphere; needs --kubeconfig, and is refused when the " +
      'host has a Cluster CRD that tower did not install',
    default: false,
  }),
  ...WITH_NAMESPACE,
  replicas: opt.int({
    help:
      'Proxy replicas, every one serving; more than 1 adds --leader-elect (one writes the Clusters) and a ' +
      'PodDisruptionBudget',
    default: 1,
    check: (v) => (v >= 1 && v <= 10 ? undefined : '1-10 replicas'),
  }),
  publishServiceAddress: opt.string({
    help: 'Address members reach the proxy at',
    value: 'ADDRESS',
    default: 'tower.kubesphere-system.svc',
    check: address,
  }),
  serviceType: opt.string({
    help: "Type of the agents' Service: ClusterIP, NodePort or LoadBalancer",
    value: 'TYPE',
    default: 'NodePort',
    check: oneOf('ClusterIP', 'NodePort', 'LoadBalancer'),
  }),
  kubeconfig: opt.string({
    help:
      'The target cluster, asked which API versions it serves (the PodDisruptionBudget is policy/v1beta1 ' +
      'before 1.21)',
    value: 'FILE',
  }),
  kubeVersion: opt.string({
    help: "The target cluster's Kubernetes version, when tower cannot ask it (--kubeconfig)",
    value: 'MAJOR.MINOR',
    defaultText: '1.21 or later',
    check: (v) => (kubeMinor(v) === undefined ? 'want a Kubernetes version such as 1.20 or v1.20.2' : undefined),
  }),
  ...METRICS_FENCE,
} satisfies Specs;

/** the minor version of a Kubernetes 1.x version such as 1.20, v1.20.2 or v1.20.2-eks */
export function kubeMinor(version: string): number | undefined {
  const m = /^v?1\.(\d{1,3})(\.\d+)?(-\S*)?$/.exec(version.trim());
  return m ? Number(m[1]) : undefined;
}

export const INSTALL_AGENT_OPTIONS = {
  ...COMMON,
  ...IMAGE,
  ...WITH_NAMESPACE,
  name: NAME,
  token: TOKEN,
  proxyServer: opt.string({ help: "The proxy's agent endpoint as the member reaches it (required)", value: 'URL' }),
  proxyFingerprint: PROXY_FINGERPRINT,
  kubesphereService: KUBESPHERE_SERVICE,
  insecureSkipProxyVerification: INSECURE,
  policyPreset: opt.string({
    help:
      'Also write a member policy for the agent to enforce, as ConfigMap tower-agent-policy (edit it later; the ' +
      'agent re-reads it): read-only (get, list, watch; never Secrets, exec, attach, port-forward or proxy), or ' +
      'namespaced (anything in --policy-namespaces, discovery, nothing else)',
    value: 'PRESET',
    defaultText: 'none',
    check: oneOf('read-only', 'namespaced'),
  }),
  policyNamespaces: opt.string({
    help: 'The namespaces of --policy-preset namespaced, comma-separated',
    value: 'NS[,NS…]',
  }),
  clusterAdmin: opt.bool({
    help:
      'Bind cluster-admin instead of the impersonation-only ClusterRole (for a Go tower proxy or ' +
      '--gateway-identity agent)',
    default: false,
  }),
  ...METRICS_FENCE,
} satisfies Specs;

export const UNINSTALL_OPTIONS = {
  ...COMMON,
  kubeconfig: opt.string({ help: 'The cluster to remove tower from (required)', value: 'FILE' }),
  dryRun: opt.bool({ help: 'List what would be deleted; delete nothing', default: false }),
  purge: opt.bool({
    help:
      "Also delete tower's CA, SSH host key and revocation list (Secrets tower-ca, tower-ssh-host-key, ConfigMap " +
      "tower-revocations): the kubeconfigs tower issued and the agents' --proxy-fingerprint then stop working; " +
      'for the agent, its member policy (ConfigMap tower-agent-policy)',
    default: false,
  }),
} satisfies Specs;

for (const s of [
  PROXY_OPTIONS,
  AGENT_OPTIONS,
  TOKEN_OPTIONS,
  KUBECONFIG_OPTIONS,
  CLUSTERS_OPTIONS,
  DELETE_OPTIONS,
  VERSION_OPTIONS,
  INSTALL_PROXY_OPTIONS,
  INSTALL_AGENT_OPTIONS,
  UNINSTALL_OPTIONS,
])
  registerOptionNames(s);
