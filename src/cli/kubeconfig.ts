import { Option } from 'clipanion';
import { KUBECONFIG_OPTIONS } from '../config/options.ts';
import { NotFoundError, StoreError } from '../errors.ts';
import type { IssuedByProxy } from '../mode/mode.ts';
import { DAY_MS } from '../pki/ca.ts';
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
      `The client certificate is signed by tower's CA (CN from --user, O from --group), bound to the ` +
      `cluster (the gateway serves it that cluster only) and lives --ttl (24h by default); its requests act in ` +
      `the member as that user and those groups (Kubernetes impersonation), so the member's RBAC decides. The ` +
      `kubeconfig's first lines say whom it acts as, its serial (for tower revoke --serial) and when it expires. ` +
      `Without --user and --group it is tower-admin in system:masters, and a warning says so. The server is the ` +
      `gateway address the proxy recorded, with /clusters/NAME.\n` +
      `\n` +
      `Kubernetes mode (--kubeconfig <host>): without --user, --group, --ttl or --gateway, prints the Cluster's ` +
      `own kubeconfig (spec.connection.kubeconfig, system:masters, as KubeSphere uses it) once its agent is ` +
      `connected; with any of them, issues one for the gateway as in file mode.`,
    examples: [
      ['Admin access to alpha', 'tower kubeconfig alpha > alpha.kubeconfig'],
      [
        "Jane, with what the member's RBAC grants her and the group viewers",
        'tower kubeconfig alpha --user jane --group viewers',
      ],
      ['For a week', 'tower kubeconfig alpha --user jane --group viewers --ttl 168h'],
      ["The Cluster's own, in a KubeSphere host", 'tower kubeconfig alpha --kubeconfig host.kubeconfig'],
    ],
  };
  readonly command = 'kubeconfig';

  name = Option.String({ name: 'NAME', required: false });

  async run(): Promise<number> {
    const o = this.load(KUBECONFIG_OPTIONS);
    const name = this.clusterName(this.name);
    // whom it is for: never a default that silently stands in for what was asked
    const forSomeone = this.given('user') || this.given('group') || this.given('ttl');
    return this.withMode(o, async (mode) => {
      if (mode.issuedByProxy && !o.gateway && !forSomeone) {
        process.stdout.write(await issuedKubeconfig(mode.issuedByProxy, mode.clusters.location, name, o.timeout));
        process.stderr.write(
          `note: this is Cluster "${name}"'s own kubeconfig, which KubeSphere uses: it acts as tower-admin in group ` +
            `system:masters (cluster-admin of the member). For a person, pass --user NAME and --group GROUPS ` +
            `(a gateway kubeconfig that expires, see --ttl)\n`,
        );
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
      const leaf = await ca.issueClient(o.user, groups, o.ttl / DAY_MS, name);
      const expires = leaf.notAfter.toISOString();
      const as = `user "${o.user}"${groups.length ? ` in groups ${groups.join(', ')}` : ''}`;
      process.stdout.write(
        renderKubeconfig({
          cluster: name,
          server,
          caPem: ca.certPem,
          user: o.user,
          certPem: leaf.cert,
          keyPem: leaf.key,
          comment: [
            `tower kubeconfig for cluster "${name}": acts as ${as}`,
            `certificate serial ${leaf.serial}, expires ${expires}`,
          ],
        }),
      );
      process.stderr.write(
        `issued ${as} for cluster "${name}": serial ${leaf.serial}, expires ${expires} ` +
          `(cut it off with: tower revoke --serial ${leaf.serial})\n`,
      );
      if (groups.includes(MASTERS) && !this.given('group'))
        process.stderr.write(
          `warning: this kubeconfig grants ${MASTERS}, cluster-admin of "${name}"; for less, pass --user NAME ` +
            `--group GROUPS and let the member's RBAC decide\n`,
        );
      return 0;
    });
  }
}

const MASTERS = 'system:masters';

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
