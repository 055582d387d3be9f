import { Option } from 'clipanion';
import { stringify as toYaml } from 'yaml';
import { CLUSTERS_OPTIONS, DELETE_OPTIONS } from '../config/options.ts';
import type { ClusterRow } from '../mode/mode.ts';
import { printable } from '../observe/log.ts';
import { TowerCommand, type CommandDoc } from './base.ts';

/** "3m", "2h", "5d" since `iso`, as kubectl shows ages */
function age(iso: string | undefined, now: number): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (Number.isNaN(s)) return '-';
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172_800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86_400)}d`;
}

/** columns padded to their widest cell; every cell escaped, as some come from files and the API */
function table(cells: string[][]): string {
  const rows = cells.map((r) => r.map(printable));
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]! + 3)))
          .join('')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

export function render(rows: ClusterRow[], output: string, now = Date.now()): string {
  if (output === 'json') return JSON.stringify({ clusters: rows }, null, 2) + '\n';
  if (output === 'yaml') return toYaml({ clusters: rows });
  const wide = output === 'wide';
  const head = ['NAME', 'AGENTS', 'CONNECTED', 'LAST SEEN', ...(wide ? ['VERSION', 'ADDRESS', 'NOTE'] : [])];
  const body = rows.map((r) => [
    r.name,
    r.agents === undefined ? '-' : String(r.agents),
    r.agents ? age(r.connectedSince, now) : '-',
    r.agents ? 'now' : r.lastSeen ? `${age(r.lastSeen, now)} ago` : 'never',
    ...(wide ? [r.agentVersion ?? '-', r.agentAddress ?? '-', r.note ?? ''] : []),
  ]);
  return table([head, ...body]);
}

export class ClustersCommand extends TowerCommand {
  static override paths = [['clusters']];
  static override options = CLUSTERS_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'clusters',
    summary: 'List the registered clusters and their agents',
    details:
      "Name, agent sessions, connected since, last seen; -o wide adds the agents' versions and addresses. The " +
      'file store shows what the running proxy recorded; in Kubernetes mode, the proxy Clusters and their ' +
      'AgentAvailable condition (one row per Cluster, AGENTS 1 while any agent is connected). When every proxy ' +
      "replica's Lease has lapsed (the last one was killed; watched up to 15 s to be sure), it sets the " +
      'conditions still True to Unknown, as a stopping replica would have, where the kubeconfig may update ' +
      'Clusters, and says so.',
    examples: [
      ['Which clusters are connected', 'tower clusters'],
      ['As JSON', 'tower clusters -o json'],
    ],
  };
  readonly command = 'clusters';

  async run(): Promise<number> {
    const o = this.load(CLUSTERS_OPTIONS);
    const table = o.output === 'table' || o.output === 'wide';
    return this.withMode(o, async (mode) => {
      const { rows, note, whenEmpty, changed } = await mode.proxyRecord.report((line) =>
        process.stderr.write(`${printable(line)}\n`),
      );
      if (changed) process.stderr.write(`${printable(changed)}\n`);
      if (note && table) process.stderr.write(`${note}\n`);
      if (rows.length === 0 && table && whenEmpty) process.stderr.write(`${whenEmpty}\n`);
      else process.stdout.write(render(rows, o.output));
      return 0;
    });
  }
}

export class DeleteCommand extends TowerCommand {
  static override paths = [['delete']];
  static override options = DELETE_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'delete NAME',
    summary: 'Unregister a cluster: its token stops working and its agents are disconnected',
    details:
      "File store: removes the cluster's record and status; a running proxy closes its agents' sessions within a " +
      'second, and their reconnects are refused. Its kubeconfigs stop working (the gateway answers 404). In ' +
      "Kubernetes mode the Cluster resource is KubeSphere's: this command says what to delete instead.",
    examples: [['Remove alpha', 'tower delete alpha']],
  };
  readonly command = 'delete';

  name = Option.String({ name: 'NAME', required: false });

  async run(): Promise<number> {
    const o = this.load(DELETE_OPTIONS);
    const name = this.clusterName(this.name);
    return this.withMode(o, async (mode) => {
      await mode.clusters.delete(name);
      process.stdout.write(
        `cluster "${name}" deleted from ${mode.clusters.location}; ` +
          'its agents are disconnected and their token no longer works\n',
      );
      return 0;
    });
  }
}
