import { Command, Option } from 'clipanion';
import { ConfigError } from '../errors.ts';
import { PROXY_OPTIONS } from '../config/options.ts';
import { log } from '../observe/log.ts';
import { Proxy } from '../proxy/proxy.ts';
import { TowerCommand } from './base.ts';

export class ProxyCommand extends TowerCommand {
  static override paths = [['proxy']];
  static override usage = Command.Usage({
    description: 'Serve agents and the cluster gateway',
    details: `
      Agents dial the agent port (HTTP upgraded to WebSocket, SSH inside); users and controllers reach
      each member's kube-apiserver at https://<publish-service-address>:<gateway-port>/clusters/<name>
      with a kubeconfig from \`tower kubeconfig\`. State lives in the data dir (default ~/.tower).
    `,
    examples: [['Serve on the default ports', '$0 proxy'], ['Publish a public address', '$0 proxy --publish-service-address proxy.example.com']],
  });
  readonly command = 'proxy';

  caCert = Option.String('--ca-cert', { description: 'CA certificate (PEM) for issuing and verifying certificates; default: tower\'s own CA in the data dir' });
  caKey = Option.String('--ca-key', { description: 'Private key (PEM) of --ca-cert' });
  host = Option.String('--host', { description: 'Address to listen on for agents and the gateway (default 0.0.0.0)' });
  port = Option.String('--port', { description: 'Agent port (default 8080; 0 picks a free one)' });
  gatewayPort = Option.String('--gateway-port', { description: 'Cluster gateway HTTPS port (default 6443; 0 picks a free one)' });
  publishServiceAddress = Option.String('--publish-service-address', { description: 'Host name or IP that agents and users reach this proxy at (default 127.0.0.1); put in certificates, kubeconfigs and join commands' });
  dataDir = Option.String('--data-dir', { description: 'Directory of the embedded store (env TOWER_HOME; default ~/.tower)' });
  kubeconfig = Option.String('--kubeconfig', { description: 'Host cluster kubeconfig for Kubernetes mode (Cluster CRD store; not in this version)' });
  leaderElect = Option.Boolean('--leader-elect', { description: 'Leader election among proxies (Kubernetes mode; not in this version)' });

  async run(): Promise<number> {
    const o = this.load(PROXY_OPTIONS, {
      caCert: this.caCert, caKey: this.caKey, host: this.host, port: this.port, gatewayPort: this.gatewayPort,
      publishServiceAddress: this.publishServiceAddress, dataDir: this.dataDir, kubeconfig: this.kubeconfig, leaderElect: this.leaderElect,
    });
    if (o.kubeconfig) throw new ConfigError('--kubeconfig selects Kubernetes mode (the Cluster CRD store), which this version does not have yet; run without it to use the embedded file store');
    if (o.leaderElect) throw new ConfigError('--leader-elect belongs to Kubernetes mode, which this version does not have yet; run one proxy per data dir without it');
    const proxy = new Proxy({
      store: this.openStore(o.dataDir),
      host: o.host,
      port: o.port,
      gatewayPort: o.gatewayPort,
      publishServiceAddress: o.publishServiceAddress,
      caCert: o.caCert,
      caKey: o.caKey,
      log,
    });
    try {
      await proxy.start();
    } catch (err) {
      await proxy.close();
      throw err;
    }
    const signal = await new Promise<string>((resolve) => {
      process.once('SIGINT', () => resolve('SIGINT'));
      process.once('SIGTERM', () => resolve('SIGTERM'));
    });
    log.info('shutting down', { signal });
    await proxy.close();
    return 0;
  }
}
