import { Command, Option } from 'clipanion';
import { readFileOrExplain } from '../config/files.ts';
import { ConfigError } from '../errors.ts';
import { AGENT_OPTIONS } from '../config/options.ts';
import { formatDuration } from '../config/duration.ts';
import { log } from '../observe/log.ts';
import { normalizeProxyServer, proxyVerification, TowerAgent } from '../agent/agent.ts';
import { credentialsFromKubeconfig, credentialsInCluster } from '../agent/credentials.ts';
import { clusterNameProblem } from '../store/names.ts';
import { CRYPTO_BACKEND } from '../tunnel/ssh.ts';
import { TowerCommand } from './base.ts';

export class AgentCommand extends TowerCommand {
  static override paths = [['agent']];
  static override usage = Command.Usage({
    description: 'Connect a member cluster to the proxy',
    details: `
      Dials the proxy, verifies it (its host key, or its TLS certificate), announces this cluster's
      kube-apiserver, and carries the proxy's requests to it with this cluster's credentials, which
      a tower proxy never receives. Without --kubeconfig it uses the pod's service account.
    `,
    examples: [['Join with the command that `tower token` printed', '$0 agent --name alpha --token <token> --proxy-server http://proxy.example:8080 --proxy-fingerprint SHA256:<fingerprint> --kubeconfig member.kubeconfig']],
  });
  readonly command = 'agent';

  name = Option.String('--name', { description: 'Cluster name, as registered with `tower token` (required)' });
  token = Option.String('--token', { description: 'The cluster\'s token (required; env TOWER_TOKEN keeps it out of ps)' });
  proxyServer = Option.String('--proxy-server', { description: 'The proxy\'s agent endpoint (default http://127.0.0.1:8080; http/https become ws/wss)' });
  proxyFingerprint = Option.String('--proxy-fingerprint', { description: 'Expected SHA256 fingerprint of the proxy\'s SSH host key; any other is refused' });
  kubeconfig = Option.String('--kubeconfig', { description: 'Member cluster kubeconfig (client certificate or token); default: in-cluster service account' });
  kubernetesService = Option.String('--kubernetes-service', { description: 'host:port of the member kube-apiserver (default: the kubeconfig\'s server, or kubernetes.default.svc:443 in a pod)' });
  kubesphereService = Option.String('--kubesphere-service', { description: 'host:port of the member ks-apiserver (default ks-apiserver.kubesphere-system.svc:80)' });
  keepalive = Option.String('--keepalive', { description: 'Interval of keepalive pings; a proxy that misses one is dropped and redialed (default 1m; 0 disables)' });
  maxRetry = Option.String('--max-retry', { description: 'Give up after this many failed connection attempts in a row (default 0: never)' });
  maxRetryInterval = Option.String('--max-retry-interval', { description: 'Longest wait between attempts (default 5m)' });
  tlsAtAgent = Option.String('--tls-at-agent', { description: 'Make the TLS to the kube-apiserver here when the proxy offers it, keeping the client key in the cluster (default true; false: as Go agents)' });
  proxyCa = Option.String('--proxy-ca', { description: 'CA bundle (PEM) that verifies a wss:// (https://) proxy\'s certificate (default: the system\'s roots)' });
  insecureSkipProxyVerification = Option.Boolean('--insecure-skip-proxy-verification', { description: 'Connect to a proxy that nothing verifies (no --proxy-fingerprint, not https://): whoever answers gets this cluster\'s requests' });
  maxChannels = Option.String('--max-channels', { description: 'Channels the proxy may hold open at once; more are refused (default 4096)' });

  async run(): Promise<number> {
    const o = this.load(AGENT_OPTIONS, {
      name: this.name, token: this.token, proxyServer: this.proxyServer, proxyFingerprint: this.proxyFingerprint,
      kubeconfig: this.kubeconfig, kubernetesService: this.kubernetesService, kubesphereService: this.kubesphereService,
      keepalive: this.keepalive, maxRetry: this.maxRetry, maxRetryInterval: this.maxRetryInterval, tlsAtAgent: this.tlsAtAgent,
      proxyCa: this.proxyCa, insecureSkipProxyVerification: this.insecureSkipProxyVerification, maxChannels: this.maxChannels,
    }, ['token']);
    if (!o.name) throw new ConfigError('--name is required: the cluster name given to `tower token`');
    const problem = clusterNameProblem(o.name);
    if (problem) throw new ConfigError(`invalid --name ${JSON.stringify(o.name)}: ${problem}`);
    if (!o.token) throw new ConfigError(`--token is required: print it on the proxy's host with: tower token ${o.name}`);
    const proxyUrl = normalizeProxyServer(o.proxyServer);
    if (o.proxyCa && !proxyUrl.startsWith('wss:')) throw new ConfigError(`--proxy-ca verifies a TLS proxy, but --proxy-server ${o.proxyServer} is not https:// (or wss://)`);
    const verifiedBy = proxyVerification(proxyUrl, o.proxyFingerprint, o.proxyCa);
    // nothing is sent to a proxy that nothing verifies: not the token, not a credential
    if (!verifiedBy && !o.insecureSkipProxyVerification) {
      throw new ConfigError(`refusing to connect to ${o.proxyServer}: nothing verifies that it is the proxy. Give --proxy-fingerprint (the join command that \`tower token ${o.name}\` prints has it), or an https:// --proxy-server whose certificate verifies (--proxy-ca), or --insecure-skip-proxy-verification to connect anyway`);
    }
    const proxyCa = o.proxyCa ? readProxyCa(o.proxyCa) : undefined;
    const kubeconfig = o.kubeconfig;
    const credentials = kubeconfig ? () => credentialsFromKubeconfig(kubeconfig) : () => credentialsInCluster();
    credentials(); // fail now, with the reason, rather than in the retry loop
    const agent = new TowerAgent({
      name: o.name,
      token: o.token,
      proxyUrl,
      credentials,
      kubernetesService: o.kubernetesService,
      kubesphereService: o.kubesphereService,
      keepaliveMs: o.keepalive,
      maxRetry: o.maxRetry,
      // as the Go agent: an interval under a second means the default
      maxRetryIntervalMs: o.maxRetryInterval < 1000 ? 300_000 : o.maxRetryInterval,
      proxyFingerprint: o.proxyFingerprint,
      proxyCa,
      insecureSkipProxyVerification: o.insecureSkipProxyVerification,
      tlsAtAgent: o.tlsAtAgent,
      maxChannels: o.maxChannels,
      log,
    });
    if (!verifiedBy) log.warn('INSECURE: --insecure-skip-proxy-verification: the proxy is not verified; whoever answers at its address gets this cluster\'s requests');
    log.info('agent starting', { cluster: o.name, proxy: proxyUrl, verified: verifiedBy || 'no', keepalive: formatDuration(o.keepalive), crypto: CRYPTO_BACKEND });
    const stop = () => agent.stop();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    await agent.run();
    log.info('agent stopped');
    return 0;
  }
}

function readProxyCa(path: string): string {
  const pem = readFileOrExplain(path, '--proxy-ca').toString('utf8');
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError(`--proxy-ca ${path} holds no PEM certificate`);
  return pem;
}
