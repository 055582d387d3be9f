import { ConfigError } from '../errors.ts';
import { PROXY_OPTIONS } from '../config/options.ts';
import { log } from '../observe/log.ts';
import type { GatewayIdentity } from '../proxy/identity.ts';
import { isKubernetesStore, TowerCommand, type CommandDoc } from './base.ts';

export class ProxyCommand extends TowerCommand {
  static override paths = [['proxy']];
  static override options = PROXY_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'proxy',
    summary: 'Serve agents and the cluster gateway',
    details: `Agents dial the agent port (HTTP upgraded to WebSocket, SSH inside); users and controllers reach each member's kube-apiserver at https://<publish-service-address>:<gateway-port>/clusters/<name> with a kubeconfig from \`tower kubeconfig\`. State lives in the data dir (default ~/.tower).

Kubernetes mode (--kubeconfig <host>, or in a pod): KubeSphere's Cluster resources are the registry; tower fills in each proxy Cluster's token, ports, endpoints, kubeconfig and conditions, keeps its mc-<name> Service in kubesphere-system, and serves it on its two ports as well.`,
    examples: [
      ['Serve on the default ports', 'tower proxy'],
      ['Publish a public address', 'tower proxy --publish-service-address proxy.example.com'],
      ['Kubernetes mode, two replicas', 'tower proxy --kubeconfig host.kubeconfig --leader-elect'],
    ],
  };
  readonly command = 'proxy';

  async run(): Promise<number> {
    const o = this.load(PROXY_OPTIONS);
    if (!o.agentTlsCert !== !o.agentTlsKey) throw new ConfigError('give both --agent-tls-cert and --agent-tls-key, or neither (--agent-tls alone uses a certificate from tower\'s CA)');
    if (o.leaderElectRenewDeadline >= o.leaderElectLeaseDuration) throw new ConfigError('--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration');
    if (o.leaderElectRetryPeriod >= o.leaderElectRenewDeadline) throw new ConfigError('--leader-elect-retry-period must be shorter than --leader-elect-renew-deadline');
    const store = await this.openStore(o, o.leaderElect ? {
      leaderElection: {
        times: { leaseMs: o.leaderElectLeaseDuration, renewDeadlineMs: o.leaderElectRenewDeadline, retryMs: o.leaderElectRetryPeriod },
        onLost: (why) => {
          // as client-go's callers do: stop at once, a restart campaigns afresh
          log.error('leader election lost; exiting', { why });
          process.exit(1);
        },
      },
    } : {});
    if (o.leaderElect && !isKubernetesStore(store)) throw new ConfigError('--leader-elect needs Kubernetes mode (--kubeconfig <host>): the file store allows one proxy per data dir');
    // loaded here, not at start: agents and other commands never evaluate the proxy and its PKI
    const { Proxy } = await import('../proxy/proxy.ts');
    const proxy = new Proxy({
      store,
      host: o.host,
      port: o.port,
      gatewayPort: o.gatewayPort,
      publishServiceAddress: o.publishServiceAddress,
      caCert: o.caCert,
      caKey: o.caKey,
      gateway: {
        identity: o.gatewayIdentity as GatewayIdentity,
        allowUnboundCertificates: o.allowUnboundCertificates,
        limits: { requestTimeoutMs: o.requestTimeout, maxRequestsInflight: o.maxRequestsInflight, maxConnections: o.gatewayMaxConnections, maxConnectionsPerAddress: o.gatewayMaxConnectionsPerAddress },
        accessLog: o.accessLog,
      },
      agentTls: o.agentTlsCert && o.agentTlsKey ? { certFile: o.agentTlsCert, keyFile: o.agentTlsKey } : o.agentTls,
      leaderElection: o.leaderElect,
      log,
    });
    const stopped = new Promise<string>((resolve) => {
      process.once('SIGINT', () => resolve('SIGINT'));
      process.once('SIGTERM', () => resolve('SIGTERM'));
    });
    // a follower waits in start() for the lease: a signal must end that wait too
    const early = await Promise.race([proxy.start().then(() => undefined), stopped]).catch(async (err: unknown) => {
      await proxy.close();
      throw err;
    });
    const signal = early ?? await stopped;
    log.info('shutting down', { signal });
    await proxy.close();
    return 0;
  }
}
