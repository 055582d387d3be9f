import { isIP } from 'node:net';
import { opt, registerOptionNames, type Specs } from './loader.ts';
import { VERSION } from '../version.ts';

/** The option tables of every subcommand: the one place that says what each accepts and its default. */

const port = (v: number) => (v >= 0 && v <= 65535 ? undefined : 'a port is 1-65535 (or 0 for any free one)');
const nonNegative = (v: number) => (v >= 0 ? undefined : 'must not be negative');
const positive = (v: number) => (v > 0 ? undefined : 'must be more than 0');
const logFormat = (v: string) => (v === 'text' || v === 'json' ? undefined : 'use text or json');
const address = (v: string) => (v === '' || /\s|\/|^:|:$/.test(v) && !isIP(v) ? 'want a host name or IP address (no scheme, no port)' : undefined);

const COMMON = {
  v: opt.int(0, (v) => (v >= 0 && v <= 10 ? undefined : 'verbosity is 0-10')),
  logFormat: opt.string('text', logFormat),
};

const DATA_DIR = { dataDir: { ...opt.string(), alsoEnv: 'TOWER_HOME' } };
/** where clusters are registered: files in the data dir, or KubeSphere's Cluster resources in a host cluster */
const STORE = {
  ...DATA_DIR,
  store: opt.string(undefined, (v) => (v === 'file' || v === 'kubernetes' ? undefined : 'use file or kubernetes')),
  kubeconfig: opt.string(),
};

export const PROXY_OPTIONS = {
  ...COMMON,
  ...STORE,
  caCert: opt.string(),
  caKey: opt.string(),
  host: opt.string('0.0.0.0', address),
  port: opt.int(8080, port),
  gatewayPort: opt.int(6443, port),
  publishServiceAddress: opt.string('127.0.0.1', address),
  gatewayIdentity: opt.string('certificate', (v) => (v === 'certificate' || v === 'agent' ? undefined : 'use certificate (act as the client certificate) or agent (act as the agent, as the Go tower)')),
  allowUnboundCertificates: opt.bool(false),
  requestTimeout: opt.duration(60_000, nonNegative),
  gatewayMaxConnections: opt.int(10_000, positive),
  gatewayMaxConnectionsPerAddress: opt.int(1_000, positive),
  accessLog: opt.bool(false),
  agentTls: opt.bool(false),
  agentTlsCert: opt.string(),
  agentTlsKey: opt.string(),
  leaderElect: opt.bool(false),
  // the Go tower's (client-go's) times
  leaderElectLeaseDuration: opt.duration(30_000, positive),
  leaderElectRenewDeadline: opt.duration(15_000, positive),
  leaderElectRetryPeriod: opt.duration(5_000, positive),
} satisfies Specs;

export const AGENT_OPTIONS = {
  ...COMMON,
  name: opt.string(),
  token: opt.string(),
  proxyServer: opt.string('http://127.0.0.1:8080'),
  proxyFingerprint: opt.string(undefined, (v) => (/^SHA256:[A-Za-z0-9+/]{43}$/.test(v) ? undefined : 'want SHA256: and 43 base64 characters, as `tower token` prints it')),
  kubeconfig: opt.string(),
  kubernetesService: opt.string(),
  kubesphereService: opt.string('ks-apiserver.kubesphere-system.svc:80'),
  keepalive: opt.duration(60_000, nonNegative),
  maxRetry: opt.int(0, nonNegative),
  maxRetryInterval: opt.duration(300_000, nonNegative),
  tlsAtAgent: opt.bool(true),
  proxyCa: opt.string(),
  insecureSkipProxyVerification: opt.bool(false),
  maxChannels: opt.int(4096, positive),
} satisfies Specs;

export const TOKEN_OPTIONS = {
  ...COMMON,
  ...STORE,
  rotate: opt.bool(false),
  proxyServer: opt.string(),
  /** Kubernetes mode: how long to wait for the proxy to fill in the token */
  timeout: opt.duration(60_000, positive),
} satisfies Specs;

export const KUBECONFIG_OPTIONS = {
  ...COMMON,
  ...STORE,
  gateway: opt.bool(false),
  timeout: opt.duration(60_000, positive),
  caCert: opt.string(),
  caKey: opt.string(),
  user: opt.string('tower-admin', (v) => (v.trim() ? undefined : 'must not be empty')),
  group: opt.string('system:masters'),
  server: opt.string(undefined, (v) => (/^https:\/\/[^/]/.test(v) ? undefined : 'want an https:// URL')),
  days: opt.int(365, (v) => (v >= 1 && v <= 3650 ? undefined : 'a certificate lives 1-3650 days')),
} satisfies Specs;

const IMAGE = { image: opt.string(`tower:${VERSION}`, (v) => (/^\S+$/.test(v) ? undefined : 'want an image reference such as registry.example/tower:1.0')) };

export const INSTALL_PROXY_OPTIONS = {
  ...COMMON,
  ...IMAGE,
  replicas: opt.int(1, (v) => (v >= 1 && v <= 10 ? undefined : '1-10 replicas')),
  publishServiceAddress: opt.string('tower.kubesphere-system.svc', address),
  serviceType: opt.string('NodePort', (v) => (['ClusterIP', 'NodePort', 'LoadBalancer'].includes(v) ? undefined : 'use ClusterIP, NodePort or LoadBalancer')),
} satisfies Specs;

export const INSTALL_AGENT_OPTIONS = {
  ...COMMON,
  ...IMAGE,
  name: opt.string(),
  token: opt.string(),
  proxyServer: opt.string(),
  proxyFingerprint: AGENT_OPTIONS.proxyFingerprint,
  kubesphereService: opt.string('ks-apiserver.kubesphere-system.svc:80'),
  insecureSkipProxyVerification: opt.bool(false),
  clusterAdmin: opt.bool(false),
} satisfies Specs;

for (const s of [PROXY_OPTIONS, AGENT_OPTIONS, TOKEN_OPTIONS, KUBECONFIG_OPTIONS, INSTALL_PROXY_OPTIONS, INSTALL_AGENT_OPTIONS]) registerOptionNames(s);
