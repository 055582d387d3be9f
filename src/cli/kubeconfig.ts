import { Command, Option } from 'clipanion';
import { KUBECONFIG_OPTIONS } from '../config/options.ts';
import { StoreError } from '../errors.ts';
import type { KubernetesStore } from '../store/kubernetes.ts';
import { loadCertificateAuthority } from '../pki/keys.ts';
import { renderKubeconfig } from '../pki/kubeconfig.ts';
import { assertClusterName } from '../store/names.ts';
import { isKubernetesStore, TowerCommand } from './base.ts';
import { waitWithProgress } from './progress.ts';

export class KubeconfigCommand extends TowerCommand {
  static override paths = [['kubeconfig']];
  static override usage = Command.Usage({
    description: 'Print a kubeconfig that reaches a member cluster through the gateway',
    details: `
      The client certificate is signed by tower's CA (CN from --user, O from --group) and bound to
      the cluster: the gateway serves it that cluster only, and its requests act in the member as
      that user and those groups (Kubernetes impersonation), so the member's RBAC decides. The
      server is the gateway address the proxy recorded in the data dir, with /clusters/<name>.

      Kubernetes mode (--kubeconfig <host>): prints the kubeconfig the proxy wrote into the Cluster
      (spec.connection.kubeconfig) once its agent is connected; --gateway issues one for the gateway
      instead, as in file mode.
    `,
    examples: [
      ['Admin access to alpha', '$0 kubeconfig alpha > alpha.kubeconfig'],
      ['Jane, with what the member\'s RBAC grants her and the group viewers', '$0 kubeconfig alpha --user jane --group viewers'],
      ['The Cluster\'s own, in a KubeSphere host', '$0 kubeconfig alpha --kubeconfig host.kubeconfig'],
    ],
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
  store = Option.String('--store', { description: 'file or kubernetes (default kubernetes when --kubeconfig is given or in a pod)' });
  kubeconfig = Option.String('--kubeconfig', { description: 'Host cluster kubeconfig: selects Kubernetes mode' });
  gateway = Option.Boolean('--gateway', { description: 'Kubernetes mode: issue a kubeconfig for the gateway instead of printing the Cluster\'s' });
  timeout = Option.String('--timeout', { description: 'Kubernetes mode: how long to wait for the agent and its kubeconfig (default 60s)' });

  async run(): Promise<number> {
    const o = this.load(KUBECONFIG_OPTIONS, {
      user: this.user, group: this.group, server: this.server, days: this.days, caCert: this.caCert, caKey: this.caKey, dataDir: this.dataDir,
      store: this.store, kubeconfig: this.kubeconfig, gateway: this.gateway, timeout: this.timeout,
    });
    const name = assertClusterName(this.name);
    const store = await this.openStore(o);
    try {
      if (isKubernetesStore(store) && !o.gateway) {
        process.stdout.write(await clusterKubeconfig(store, name, o.timeout));
        return 0;
      }
      const cluster = await store.get(name);
      if (!cluster) throw new StoreError('ENOTFOUND', `cluster "${name}" not found in ${store.location} (create it with: tower token ${name})`);
      if (cluster.problem) throw new StoreError('EUNUSABLE', `cluster "${name}" is registered, but ${cluster.problem} (restore it, or: tower token ${name} --rotate)`);
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

/** spec.connection.kubeconfig, once the proxy has written it for a connected agent. */
async function clusterKubeconfig(store: KubernetesStore, name: string, timeoutMs: number): Promise<string> {
  if (!(await store.resource(name))) {
    throw new StoreError('ENOTFOUND', `Cluster "${name}" not found in ${store.location} (create it with: tower token ${name} --kubeconfig <host>)`);
  }
  return waitWithProgress(`waiting for an agent of Cluster "${name}" to connect`, async () => {
    const c = await store.resource(name);
    if (!c) throw new StoreError('ENOTFOUND', `Cluster "${name}" was deleted while waiting`);
    const agent = c.status?.conditions?.find((x) => x.type === 'AgentAvailable')?.status === 'True';
    const b64 = c.spec?.connection?.kubeconfig;
    return agent && b64 ? Buffer.from(b64, 'base64').toString('utf8') : undefined;
  }, timeoutMs, `no agent of Cluster "${name}" has connected to the proxy yet (start one with the command that "tower token ${name} --kubeconfig <host>" prints)`);
}
