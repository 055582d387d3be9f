import { Option } from 'clipanion';
import { stringify as toYaml } from 'yaml';
import { CLUSTERS_OPTIONS, DELETE_OPTIONS } from '../config/options.ts';
import { StoreError } from '../errors.ts';
import type { KubeCluster } from '../kube/resource.ts';
import { pidAlive, type FileStore } from '../store/file.ts';
import { printable } from '../observe/log.ts';
import type { KubernetesStore } from '../store/kubernetes.ts';
import { isKubernetesStore, TowerCommand, type CommandDoc } from './base.ts';

/** One row of `tower clusters`, in either store. */
export interface ClusterRow {
  name: string;
  /** agent sessions; undefined when nobody knows (no proxy running) */
  agents: number | undefined;
  connectedSince?: string;
  lastSeen?: string;
  agentVersion?: string;
  agentAddress?: string;
  /** why the row is not what it seems: an unusable record, no proxy */
  note?: string;
}

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

async function fileRows(store: FileStore): Promise<{ rows: ClusterRow[]; note?: string }> {
  const record = await store.readProxyRecord();
  const running = pidAlive(record?.pid);
  const rows: ClusterRow[] = [];
  for (const c of await store.list()) {
    const st = c.problem ? undefined : await store.readStatus(c.name);
    rows.push({
      name: c.name,
      agents: running ? (st?.agents ?? 0) : undefined,
      connectedSince: st?.since,
      lastSeen: st?.connected && running ? new Date().toISOString() : st?.lastSeen,
      agentVersion: st?.agentVersions,
      agentAddress: st?.agentAddresses,
      note: c.problem ? `unusable record: ${c.problem}` : undefined,
    });
  }
  return {
    rows,
    note: running
      ? undefined
      : `no proxy is serving ${store.location}${record?.pid ? ` (the last one was pid ${record.pid})` : ''}: AGENTS unknown`,
  };
}

/** Kubernetes mode: from the Cluster resources of type proxy and their AgentAvailable condition. */
async function kubernetesRows(store: KubernetesStore): Promise<ClusterRow[]> {
  const { items } = await store.host.listClusters();
  return items
    .filter((c) => c.spec?.connection?.type === 'proxy')
    .map((c: KubeCluster) => {
      const available = c.status?.conditions?.find((x) => x.type === 'AgentAvailable');
      const initialized = c.status?.conditions?.some((x) => x.type === 'Initialized' && x.status === 'True');
      const up = available?.status === 'True';
      return {
        name: c.metadata.name,
        // the proxy sets AgentAvailable when an agent first connects
        agents: available ? (up ? 1 : 0) : initialized ? 0 : undefined,
        connectedSince: up ? available?.lastTransitionTime : undefined,
        lastSeen: up ? new Date().toISOString() : available?.lastTransitionTime,
        note: up
          ? undefined
          : (available?.message ??
            (initialized ? 'no agent has connected yet' : 'not initialized by a tower proxy yet (is one running?)')),
      };
    })
    .sort((a, b) => a.name.localeCompare(b.name));
}

export class ClustersCommand extends TowerCommand {
  static override paths = [['clusters']];
  static override options = CLUSTERS_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'clusters',
    summary: 'List the registered clusters and their agents',
    details:
      "Name, agent sessions, connected since, last seen; -o wide adds the agents' versions and addresses. The file store shows what the running proxy recorded; in Kubernetes mode, the proxy Clusters and their AgentAvailable condition (one row per Cluster, AGENTS 1 while any agent is connected).",
    examples: [
      ['Which clusters are connected', 'tower clusters'],
      ['As JSON', 'tower clusters -o json'],
    ],
  };
  readonly command = 'clusters';

  async run(): Promise<number> {
    const o = this.load(CLUSTERS_OPTIONS);
    const table = o.output === 'table' || o.output === 'wide';
    return this.withStore(o, async (store) => {
      if (isKubernetesStore(store)) {
        process.stdout.write(render(await kubernetesRows(store), o.output));
        return 0;
      }
      const { rows, note } = await fileRows(store as FileStore);
      if (note && table) process.stderr.write(`${note}\n`);
      if (rows.length === 0 && table)
        process.stderr.write(`no clusters in ${store.location} (register one with: tower token NAME)\n`);
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
      "File store: removes the cluster's record and status; a running proxy closes its agents' sessions within a second, and their reconnects are refused. Its kubeconfigs stop working (the gateway answers 404). In Kubernetes mode the Cluster resource is KubeSphere's: this command says what to delete instead.",
    examples: [['Remove alpha', 'tower delete alpha']],
  };
  readonly command = 'delete';

  name = Option.String({ name: 'NAME', required: false });

  async run(): Promise<number> {
    const o = this.load(DELETE_OPTIONS);
    const name = this.clusterName(this.name);
    return this.withStore(o, async (store) => {
      if (isKubernetesStore(store)) {
        throw new StoreError(
          'EKUBE',
          `in Kubernetes mode cluster "${name}" is KubeSphere's Cluster resource, which tower does not delete: kubectl --kubeconfig <host> delete cluster.cluster.kubesphere.io ${name} (tower then stops serving it and removes its Service mc-${name})`,
        );
      }
      if (!(await (store as FileStore).remove(name)))
        throw new StoreError('ENOTFOUND', `cluster "${name}" not found in ${store.location} (see: tower clusters)`);
      process.stdout.write(
        `cluster "${name}" deleted from ${store.location}; its agents are disconnected and their token no longer works\n`,
      );
      return 0;
    });
  }
}
