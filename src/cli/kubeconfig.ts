import { Command, Option } from 'clipanion';
import { KUBECONFIG_OPTIONS } from '../config/options.ts';
import { StoreError } from '../errors.ts';
import { loadCertificateAuthority } from '../pki/keys.ts';
import { renderKubeconfig } from '../pki/kubeconfig.ts';
import { assertClusterName } from '../store/names.ts';
import { TowerCommand } from './base.ts';

export class KubeconfigCommand extends TowerCommand {
  static override paths = [['kubeconfig']];
  static override usage = Command.Usage({
    description: 'Print a kubeconfig that reaches a member cluster through the gateway',
    details: `
      The client certificate is signed by tower's CA (CN from --user, O from --group) and bound to
      the cluster: the gateway serves it that cluster only. The server is the gateway address the
      proxy recorded in the data dir, with /clusters/<name>.
    `,
    examples: [['Admin access to alpha', '$0 kubeconfig alpha > alpha.kubeconfig'], ['A read-only group', '$0 kubeconfig alpha --user jane --group viewers']],
  });
  readonly command = 'kubeconfig';

  name = Option.String({ name: 'name' });
  user = Option.String('--user', { description: 'User name, the certificate\'s CN (default tower-admin)' });
  group = Option.String('--group', { description: 'Group, the certificate\'s O (default system:masters); comma-separated for several' });
  server = Option.String('--server', { description: 'Gateway URL to put in the kubeconfig (default: what the proxy recorded, plus /clusters/<name>)' });
  days = Option.String('--days', { description: 'Certificate lifetime in days (default 365; never beyond the CA)' });
  caCert = Option.String('--ca-cert', { description: 'CA certificate, when the proxy runs with --ca-cert' });
  caKey = Option.String('--ca-key', { description: 'CA key, when the proxy runs with --ca-key' });
  dataDir = Option.String('--data-dir', { description: 'Directory of the embedded store (env TOWER_HOME; default ~/.tower)' });

  async run(): Promise<number> {
    const o = this.load(KUBECONFIG_OPTIONS, {
      user: this.user, group: this.group, server: this.server, days: this.days, caCert: this.caCert, caKey: this.caKey, dataDir: this.dataDir,
    });
    const name = assertClusterName(this.name);
    const store = this.openStore(o.dataDir);
    try {
      if (!(await store.get(name))) {
        throw new StoreError('ENOTFOUND', `cluster "${name}" not found in ${store.location} (create it with: tower token ${name})`);
      }
      const ca = await loadCertificateAuthority(store, o.caCert, o.caKey);
      const record = await store.readProxyRecord();
      const server = o.server ?? `${record?.gatewayUrl ?? 'https://127.0.0.1:6443'}/clusters/${name}`;
      const groups = o.group.split(',').map((g) => g.trim()).filter(Boolean);
      const leaf = await ca.issueClient(o.user, groups, o.days, name);
      process.stdout.write(renderKubeconfig({ cluster: name, server, caPem: ca.certPem, user: o.user, certPem: leaf.cert, keyPem: leaf.key }));
      return 0;
    } finally {
      store.close();
    }
  }
}
