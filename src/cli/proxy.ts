import { hostname } from 'node:os';
import { ConfigError } from '../errors.ts';
import { serverIdProblem } from '../config/names.ts';
import { PROXY_OPTIONS } from '../config/options.ts';
import { openMode } from '../mode/open.ts';
import { log } from '../observe/log.ts';
import { trimMemoryPeriodically } from '../observe/memory.ts';
import { nameProcess } from '../native/index.ts';
import type { GatewayIdentity } from '../proxy/identity.ts';
import { TowerCommand, type CommandDoc } from './base.ts';

export class ProxyCommand extends TowerCommand {
  static override paths = [['proxy']];
  static override options = PROXY_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'proxy',
    summary: 'Serve agents and the cluster gateway',
    details:
      `Agents dial the agent port (HTTP upgraded to WebSocket, SSH inside); users and controllers reach each ` +
      `member's kube-apiserver at https://<publish-service-address>:<gateway-port>/clusters/<name> with a ` +
      `kubeconfig from \`tower kubeconfig\`. State lives in the data dir (default ~/.tower).\n` +
      `\n` +
      `Kubernetes mode (--kubeconfig <host>, or in a pod): KubeSphere's Cluster resources are the registry; ` +
      `tower fills in each proxy Cluster's token, ports, endpoints, kubeconfig and conditions, keeps its ` +
      `mc-<name> Service in kubesphere-system, and serves it on its two ports as well. Every replica serves: ` +
      `each holds a Lease tower-proxy-<server-id>, tower agents hold a session to each, and a replica without ` +
      `an agent of a cluster forwards to one that has one. On SIGTERM a replica drains: unready, agents told, ` +
      `requests finished, watches handed back.`,
    examples: [
      ['Serve on the default ports', 'tower proxy'],
      ['Publish a public address', 'tower proxy --publish-service-address proxy.example.com'],
      [
        'Kubernetes mode, one of several replicas',
        'tower proxy --kubeconfig host.kubeconfig --leader-elect --server-id tower-0 --advertise-address 10.0.0.5',
      ],
    ],
  };
  readonly command = 'proxy';

  async run(): Promise<number> {
    const o = this.load(PROXY_OPTIONS);
    if (!o.agentTlsCert !== !o.agentTlsKey)
      throw new ConfigError(
        'give both --agent-tls-cert and --agent-tls-key, or neither (--agent-tls alone uses a certificate from ' +
          "tower's CA)",
      );
    if (o.leaderElectRenewDeadline >= o.leaderElectLeaseDuration)
      throw new ConfigError('--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration');
    if (o.leaderElectRetryPeriod >= o.leaderElectRenewDeadline)
      throw new ConfigError('--leader-elect-retry-period must be shorter than --leader-elect-renew-deadline');
    if (o.serverLeaseRenewPeriod >= o.serverLeaseDuration)
      throw new ConfigError('--server-lease-renew-period must be shorter than --server-lease-duration');
    const serverId = o.serverId ?? defaultServerId();
    const leaderElection = {
      times: {
        leaseMs: o.leaderElectLeaseDuration,
        renewDeadlineMs: o.leaderElectRenewDeadline,
        retryMs: o.leaderElectRetryPeriod,
      },
    };
    const mode = await openMode(o, { log, leaderElection: o.leaderElect ? leaderElection : undefined });
    // loaded here, not at start: agents and other commands never evaluate the proxy and its PKI
    const { Proxy } = await import('../proxy/proxy.ts');
    const proxy = new Proxy({
      mode,
      host: o.host,
      port: o.port,
      gatewayPort: o.gatewayPort,
      metricsPort: o.metricsPort,
      publishServiceAddress: o.publishServiceAddress,
      caCert: o.caCert,
      caKey: o.caKey,
      gateway: {
        identity: o.gatewayIdentity as GatewayIdentity,
        allowUnboundCertificates: o.allowUnboundCertificates,
        limits: {
          requestTimeoutMs: o.requestTimeout,
          maxRequestsInflight: o.maxRequestsInflight,
          maxStalledBytes: o.maxStalledMemory,
          maxConnections: o.gatewayMaxConnections,
          maxConnectionsPerAddress: o.gatewayMaxConnectionsPerAddress,
        },
        accessLog: o.accessLog,
      },
      agentTls: o.agentTlsCert && o.agentTlsKey ? { certFile: o.agentTlsCert, keyFile: o.agentTlsKey } : o.agentTls,
      leaderElection: o.leaderElect,
      serverId,
      advertiseAddress: o.advertiseAddress ?? (process.env.POD_IP || undefined),
      replicaTimes: { leaseMs: o.serverLeaseDuration, renewMs: o.serverLeaseRenewPeriod },
      log,
    });
    const stopped = new Promise<string>((resolve) => {
      process.once('SIGINT', () => resolve('SIGINT'));
      process.once('SIGTERM', () => resolve('SIGTERM'));
    });
    const early = await Promise.race([proxy.start().then(() => undefined), stopped]).catch(async (err: unknown) => {
      await proxy.close();
      throw err;
    });
    nameProcess();
    const stopTrimming = trimMemoryPeriodically(log);
    const signal = early ?? (await stopped);
    stopTrimming();
    // a second signal does not wait for the drain
    const again = () => {
      log.warn('second signal: exiting without draining');
      process.exit(1);
    };
    process.once('SIGINT', again);
    process.once('SIGTERM', again);
    log.info('shutting down', { signal });
    if (!early) await proxy.drain({ delayMs: signal === 'SIGTERM' ? o.shutdownDelay : 0, graceMs: o.shutdownGrace });
    await proxy.close();
    return 0;
  }
}

/** The pod's name (the Deployment sets POD_NAME), else the host name, made a valid id. */
function defaultServerId(): string {
  const raw = (process.env.POD_NAME || hostname()).toLowerCase();
  const id = raw
    .replace(/[^a-z0-9.-]/g, '-')
    .replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '')
    .slice(0, 63)
    .replace(/[^a-z0-9]+$/, '');
  return serverIdProblem(id) ? 'tower' : id;
}
