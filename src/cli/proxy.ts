import { Command, Option } from 'clipanion';
import { ConfigError } from '../errors.ts';
import { PROXY_OPTIONS } from '../config/options.ts';
import { log } from '../observe/log.ts';
import type { GatewayIdentity } from '../proxy/identity.ts';
import { isKubernetesStore, TowerCommand } from './base.ts';

export class ProxyCommand extends TowerCommand {
  static override paths = [['proxy']];
  static override usage = Command.Usage({
    description: 'Serve agents and the cluster gateway',
    details: `
      Agents dial the agent port (HTTP upgraded to WebSocket, SSH inside); users and controllers reach
      each member's kube-apiserver at https://<publish-service-address>:<gateway-port>/clusters/<name>
      with a kubeconfig from \`tower kubeconfig\`. State lives in the data dir (default ~/.tower).

      Kubernetes mode (--kubeconfig <host>, or in a pod): KubeSphere's Cluster resources are the
      registry; tower fills in each proxy Cluster's token, ports, endpoints, kubeconfig and conditions,
      keeps its mc-<name> Service in kubesphere-system, and serves it on its two ports as well.
    `,
    examples: [
      ['Serve on the default ports', '$0 proxy'],
      ['Publish a public address', '$0 proxy --publish-service-address proxy.example.com'],
      ['Kubernetes mode, two replicas', '$0 proxy --kubeconfig host.kubeconfig --leader-elect'],
    ],
  });
  readonly command = 'proxy';

  caCert = Option.String('--ca-cert', { description: 'CA certificate (PEM) for issuing and verifying certificates; default: tower\'s own CA in the data dir' });
  caKey = Option.String('--ca-key', { description: 'Private key (PEM) of --ca-cert' });
  host = Option.String('--host', { description: 'Address to listen on for agents and the gateway (default 0.0.0.0)' });
  port = Option.String('--port', { description: 'Agent port (default 8080; 0 picks a free one)' });
  gatewayPort = Option.String('--gateway-port', { description: 'Cluster gateway HTTPS port (default 6443; 0 picks a free one)' });
  publishServiceAddress = Option.String('--publish-service-address', { description: 'Host name or IP that agents and users reach this proxy at (default 127.0.0.1); put in certificates, kubeconfigs and join commands' });
  dataDir = Option.String('--data-dir', { description: 'Directory of the embedded store (env TOWER_HOME; default ~/.tower)' });
  store = Option.String('--store', { description: 'Cluster registry: file (the data dir) or kubernetes (KubeSphere\'s Cluster resources); default kubernetes when --kubeconfig is given or in a pod' });
  kubeconfig = Option.String('--kubeconfig', { description: 'Host cluster kubeconfig: selects Kubernetes mode' });
  gatewayIdentity = Option.String('--gateway-identity', { description: 'Who gateway requests act as in the member: certificate (default; its CN and O, by impersonation) or agent (the agent\'s full rights, as the Go tower; logged as a warning)' });
  allowUnboundCertificates = Option.Boolean('--allow-unbound-certificates', { description: 'Let the shared gateway serve client certificates that name no cluster (to any cluster)' });
  requestTimeout = Option.String('--request-timeout', { description: 'How long a gateway request waits for the member\'s response headers before a 504 (default 60s; watches and streams run on once they start; 0: no limit)' });
  gatewayMaxConnections = Option.String('--gateway-max-connections', { description: 'Connections the gateway (and each cluster port) holds at once (default 10000)' });
  gatewayMaxConnectionsPerAddress = Option.String('--gateway-max-connections-per-address', { description: 'Connections from one client address (default 1000)' });
  accessLog = Option.Boolean('--access-log', { description: 'One log line per gateway request: cluster, user, groups, verb, path, status, duration' });
  agentTls = Option.Boolean('--agent-tls', { description: 'Serve TLS (wss://) on the agent port, with a certificate from tower\'s CA for the publish address' });
  agentTlsCert = Option.String('--agent-tls-cert', { description: 'Serve TLS on the agent port with this certificate (PEM) instead' });
  agentTlsKey = Option.String('--agent-tls-key', { description: 'Private key (PEM) of --agent-tls-cert' });
  leaderElect = Option.Boolean('--leader-elect', { description: 'Kubernetes mode: only the holder of Lease kubesphere-system/tower serves; the others wait to take over' });
  leaseDuration = Option.String('--leader-elect-lease-duration', { description: 'How long a lease holds after its last renewal (default 30s)' });
  renewDeadline = Option.String('--leader-elect-renew-deadline', { description: 'The leader steps down when it could not renew for this long (default 15s)' });
  retryPeriod = Option.String('--leader-elect-retry-period', { description: 'Between attempts to take or renew the lease (default 5s)' });

  async run(): Promise<number> {
    const o = this.load(PROXY_OPTIONS, {
      caCert: this.caCert, caKey: this.caKey, host: this.host, port: this.port, gatewayPort: this.gatewayPort,
      publishServiceAddress: this.publishServiceAddress, dataDir: this.dataDir, store: this.store, kubeconfig: this.kubeconfig, leaderElect: this.leaderElect,
      leaderElectLeaseDuration: this.leaseDuration, leaderElectRenewDeadline: this.renewDeadline, leaderElectRetryPeriod: this.retryPeriod,
      gatewayIdentity: this.gatewayIdentity, allowUnboundCertificates: this.allowUnboundCertificates, requestTimeout: this.requestTimeout,
      gatewayMaxConnections: this.gatewayMaxConnections, gatewayMaxConnectionsPerAddress: this.gatewayMaxConnectionsPerAddress, accessLog: this.accessLog,
      agentTls: this.agentTls, agentTlsCert: this.agentTlsCert, agentTlsKey: this.agentTlsKey,
    });
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
        limits: { requestTimeoutMs: o.requestTimeout, maxConnections: o.gatewayMaxConnections, maxConnectionsPerAddress: o.gatewayMaxConnectionsPerAddress },
        accessLog: o.accessLog,
      },
      agentTls: o.agentTlsCert && o.agentTlsKey ? { certFile: o.agentTlsCert, keyFile: o.agentTlsKey } : o.agentTls,
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
