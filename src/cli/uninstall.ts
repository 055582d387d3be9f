import { UNINSTALL_OPTIONS } from '../config/options.ts';
import { ConfigError } from '../errors.ts';
import { TowerCommand, type CommandDoc } from './base.ts';

const DETAILS =
  `Deletes, by their labels (app.kubernetes.io/managed-by=tower, app.kubernetes.io/instance=tower-proxy or ` +
  `tower-agent), what \`tower install\` applied and what the proxy made while running (the clusters' mc-<name> ` +
  `Services, its Leases and ConfigMap). Never the namespace kubesphere-system, the Cluster CRD or the Clusters: ` +
  `they carry no tower label. tower's CA, SSH host key and revocation list stay unless --purge, so that a ` +
  `reinstall keeps the kubeconfigs, the agents' fingerprints and what was revoked. Prints each object; --dry-run ` +
  `only prints.`;

async function uninstall(part: 'proxy' | 'agent', o: { kubeconfig?: string; dryRun: boolean; purge: boolean }) {
  if (!o.kubeconfig)
    throw new ConfigError(`--kubeconfig is required: the ${part === 'proxy' ? 'host' : 'member'} cluster's kubeconfig`);
  // loaded only here: the Kubernetes client is large
  const { HostCluster } = await import('../mode/kubernetes/api.ts');
  const { deleteObjects, ownedObjects } = await import('../mode/kubernetes/uninstall.ts');
  const host = new HostCluster(o.kubeconfig);
  const objects = await ownedObjects(host, part, o.purge);
  for (const x of objects)
    process.stdout.write(
      `${o.dryRun ? 'would delete' : 'deleting'} ${x.kind} ${x.namespace ? `${x.namespace}/` : ''}${x.name}\n`,
    );
  if (objects.length === 0) process.stdout.write(`nothing of tower's ${part} in ${host.server}\n`);
  if (!o.dryRun) await deleteObjects(host, objects);
  return 0;
}

export class UninstallProxyCommand extends TowerCommand {
  static override paths = [['uninstall', 'proxy']];
  static override options = UNINSTALL_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'uninstall proxy --kubeconfig FILE',
    summary: "Delete the proxy's objects from a host cluster, keeping the Clusters, their CRD and the namespace",
    details: DETAILS,
    examples: [
      ['See what would go', 'tower uninstall proxy --kubeconfig host.kubeconfig --dry-run'],
      ['Remove it', 'tower uninstall proxy --kubeconfig host.kubeconfig'],
    ],
  };
  readonly command = 'uninstall';

  run(): Promise<number> {
    return uninstall('proxy', this.load(UNINSTALL_OPTIONS));
  }
}

export class UninstallAgentCommand extends TowerCommand {
  static override paths = [['uninstall', 'agent']];
  static override options = UNINSTALL_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'uninstall agent --kubeconfig FILE',
    summary: "Delete the agent's objects from a member cluster, keeping the namespace",
    details: DETAILS,
    examples: [['Remove it', 'tower uninstall agent --kubeconfig member.kubeconfig']],
  };
  readonly command = 'uninstall';

  run(): Promise<number> {
    return uninstall('agent', this.load(UNINSTALL_OPTIONS));
  }
}
