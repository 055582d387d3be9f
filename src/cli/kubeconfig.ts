import { Option } from 'clipanion';
import { KUBECONFIG_OPTIONS } from '../config/options.ts';
import { StoreError } from '../errors.ts';
import type { KubernetesStore } from '../store/kubernetes.ts';
import { loadCertificateAuthority } from '../pki/keys.ts';
import { renderKubeconfig } from '../pki/kubeconfig.ts';
import { isKubernetesStore, TowerCommand, type CommandDoc } from './base.ts';
import { waitWithProgress } from './progress.ts';

export class KubeconfigCommand extends TowerCommand {
  static override paths = [['kubeconfig']];
  static override options = KUBECONFIG_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'kubeconfig NAME',
    summary: 'Print a kubeconfig that reaches a member cluster through the gateway',
    details: `The client certificate is signed by tower's CA (CN from --user, O from --group) and bound to the cluster: the gateway serves it that cluster only, and its requests act in the member as that user and those groups (Kubernetes impersonation), so the member's RBAC decides. The server is the gateway address the proxy recorded, with /clusters/NAME.

Kubernetes mode (--kubeconfig <host>): prints the kubeconfig the proxy wrote into the Cluster (spec.connection.kubeconfig) once its agent is connected; --gateway issues one for the gateway instead, as in file mode.`,
    examples: [
      ['Admin access to alpha', 'tower kubeconfig alpha > alpha.kubeconfig'],
      [
        "Jane, with what the member's RBAC grants her and the group viewers",
        'tower kubeconfig alpha --user jane --group viewers',
      ],
      ["The Cluster's own, in a KubeSphere host", 'tower kubeconfig alpha --kubeconfig host.kubeconfig'],
    ],
  };
  readonly command = 'kubeconfig';

  name = Option.String({ name: 'NAME', required: false });

  async run(): Promise<number> {
    const o = this.load(KUBECONFIG_OPTIONS);
    const name = this.clusterName(this.name);
    return this.withStore(o, async (store) => {
      if (isKubernetesStore(store) && !o.gateway) {
        process.stdout.write(await clusterKubeconfig(store, name, o.timeout));
        return 0;
      }
      const cluster = await store.get(name);
      if (!cluster)
        throw new StoreError(
          'ENOTFOUND',
          `cluster "${name}" not found in ${store.location} (create it with: tower token ${name})`,
        );
      if (cluster.problem)
        throw new StoreError(
          'EUNUSABLE',
          `cluster "${name}" is registered, but ${cluster.problem} (restore it, or: tower token ${name} --rotate)`,
        );
      const ca = await loadCertificateAuthority(store, o.caCert, o.caKey);
      const record = await store.readProxyRecord();
      const server = o.server ?? `${record?.gatewayUrl ?? 'https://127.0.0.1:6443'}/clusters/${name}`;
      const groups = o.group
        .split(',')
        .map((g) => g.trim())
        .filter(Boolean);
      const leaf = await ca.issueClient(o.user, groups, o.days, name);
      process.stdout.write(
        renderKubeconfig({
          cluster: name,
          server,
          caPem: ca.certPem,
          user: o.user,
          certPem: leaf.cert,
          keyPem: leaf.key,
        }),
      );
      return 0;
    });
  }
}

/** spec.connection.kubeconfig, once the proxy has written it for a connected agent. */
async function clusterKubeconfig(store: KubernetesStore, name: string, timeoutMs: number): Promise<string> {
  if (!(await store.resource(name))) {
    throw new StoreError(
      'ENOTFOUND',
      `Cluster "${name}" not found in ${store.location} (create it with: tower token ${name} --kubeconfig <host>)`,
    );
  }
  return waitWithProgress(
    `waiting for an agent of Cluster "${name}" to connect`,
    async () => {
      const c = await store.resource(name);
      if (!c) throw new StoreError('ENOTFOUND', `Cluster "${name}" was deleted while waiting`);
      const agent = c.status?.conditions?.find((x) => x.type === 'AgentAvailable')?.status === 'True';
      const b64 = c.spec?.connection?.kubeconfig;
      return agent && b64 ? Buffer.from(b64, 'base64').toString('utf8') : undefined;
    },
    timeoutMs,
    `no agent of Cluster "${name}" has connected to the proxy yet (start one with the command that "tower token ${name} --kubeconfig <host>" prints)`,
  );
}
