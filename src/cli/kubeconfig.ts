import { Option } from 'clipanion';
import { KUBECONFIG_OPTIONS } from '../config/options.ts';
import { NotFoundError, StoreError } from '../errors.ts';
import type { IssuedByProxy } from '../mode/mode.ts';
import { loadCertificateAuthority } from '../pki/keys.ts';
import { renderKubeconfig } from '../pki/kubeconfig.ts';
import { TowerCommand, type CommandDoc } from './base.ts';
import { waitWithProgress } from './progress.ts';

export class KubeconfigCommand extends TowerCommand {
  static override paths = [['kubeconfig']];
  static override options = KUBECONFIG_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'kubeconfig NAME',
    summary: 'Print a kubeconfig that reaches a member cluster through the gateway',
    details:
      `The client certificate is signed by tower's CA (CN from --user, O from --group) and bound to the ` +
      `cluster: the gateway serves it that cluster only, and its requests act in the member as that user and ` +
      `those groups (Kubernetes impersonation), so the member's RBAC decides. The server is the gateway ` +
      `address the proxy recorded, with /clusters/NAME.\n` +
      `\n` +
      `Kubernetes mode (--kubeconfig <host>): prints the kubeconfig the proxy wrote into the Cluster ` +
      `(spec.connection.kubeconfig) once its agent is connected; --gateway issues one for the gateway instead, ` +
      `as in file mode.`,
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
    return this.withMode(o, async (mode) => {
      if (mode.issuedByProxy && !o.gateway) {
        process.stdout.write(await issuedKubeconfig(mode.issuedByProxy, mode.clusters.location, name, o.timeout));
        return 0;
      }
      const cluster = await mode.clusters.get(name);
      if (!cluster)
        throw new NotFoundError(
          `cluster "${name}" not found in ${mode.clusters.location} (create it with: tower token ${name})`,
        );
      if (cluster.problem)
        throw new StoreError(
          'EUNUSABLE',
          `cluster "${name}" is registered, but ${cluster.problem} (restore it, or: tower token ${name} --rotate)`,
        );
      const ca = await loadCertificateAuthority(mode.keys, o.caCert, o.caKey);
      const record = await mode.proxyRecord.read();
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

/** The kubeconfig the proxy issued the cluster, once an agent of it has connected. */
async function issuedKubeconfig(
  issuer: IssuedByProxy,
  location: string,
  name: string,
  timeoutMs: number,
): Promise<string> {
  if (!(await issuer.requested(name))) {
    throw new NotFoundError(
      `Cluster "${name}" not found in ${location} (create it with: tower token ${name} --kubeconfig <host>)`,
    );
  }
  return waitWithProgress(
    `waiting for an agent of Cluster "${name}" to connect`,
    () => issuer.kubeconfig(name),
    timeoutMs,
    `no agent of Cluster "${name}" has connected to the proxy yet ` +
      `(start one with the command that "tower token ${name} --kubeconfig <host>" prints)`,
  );
}
