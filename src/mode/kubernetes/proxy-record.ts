import type { V1ConfigMap } from '@kubernetes/client-node';
import type { Logger } from '../../observe/log.ts';
import type { ClusterReport, ClusterRow, ProxyRecord, ProxyRecords } from '../mode.ts';
import { apiError, apiMessage, apiStatus, orUndefined, type HostCluster } from './api.ts';
import { unserved } from './desired.ts';
import type { ClusterController } from './controller.ts';
import { servingReplicas } from './replicas.ts';
import { NAMESPACE, PROXY_OWNED_LABELS, type ClusterCondition, type KubeCluster } from './resource.ts';

const PROXY_RECORD = 'tower-proxy';

/**
 * The proxy's addresses in ConfigMap kubesphere-system/tower-proxy; its agents as the Clusters'
 * AgentAvailable conditions, which the controller derives from the live agents.
 */
export class KubernetesProxyRecord implements ProxyRecords {
  #host: HostCluster;
  #log: Logger;
  #controller: () => ClusterController | undefined;

  constructor(host: HostCluster, log: Logger, controller: () => ClusterController | undefined) {
    this.#host = host;
    this.#log = log;
    this.#controller = controller;
  }

  async read(): Promise<ProxyRecord | undefined> {
    const cm = await orUndefined(
      this.#host.core.readNamespacedConfigMap({ name: PROXY_RECORD, namespace: NAMESPACE }),
    ).catch(() => undefined);
    const d = cm?.data;
    if (!d?.agentUrl || !d.gatewayUrl) return undefined;
    return { agentUrl: d.agentUrl, gatewayUrl: d.gatewayUrl, hostKeyFingerprint: d.hostKeyFingerprint ?? '' };
  }

  async write(record: ProxyRecord): Promise<void> {
    const core = this.#host.core;
    const data = {
      agentUrl: record.agentUrl,
      gatewayUrl: record.gatewayUrl,
      hostKeyFingerprint: record.hostKeyFingerprint,
    };
    const body: V1ConfigMap = {
      metadata: {
        name: PROXY_RECORD,
        namespace: NAMESPACE,
        labels: { 'app.kubernetes.io/name': 'tower', ...PROXY_OWNED_LABELS },
      },
      data,
    };
    try {
      const cm = await orUndefined(core.readNamespacedConfigMap({ name: PROXY_RECORD, namespace: NAMESPACE }));
      if (!cm) await core.createNamespacedConfigMap({ namespace: NAMESPACE, body });
      else await core.replaceNamespacedConfigMap({ name: PROXY_RECORD, namespace: NAMESPACE, body: { ...cm, data } });
    } catch (err) {
      this.#log.warn("cannot record the proxy's addresses (tower token prints defaults)", {
        configMap: `${NAMESPACE}/${PROXY_RECORD}`,
        err: apiError('writing', this.#host.server, err).message,
      });
    }
  }

  /** The controller derives the conditions from the live agents: a change is a reason to reconcile. */
  async writeStatus(name: string): Promise<void> {
    this.#controller()?.enqueue(name);
  }

  /**
   * The Cluster resources of type proxy and their AgentAvailable condition. A replica killed outright writes
   * nothing on its way out: when every replica's Lease has lapsed, the conditions still True are set as a
   * stopping last replica would have (`unserved`), where this kubeconfig may; where it may not, the rows say so.
   * No Lease at all: the last one withdrew it and wrote the conditions, or the proxy is not tower.
   */
  async report(say: (line: string) => void = () => undefined): Promise<ClusterReport> {
    const list = () =>
      this.#host.listClusters().catch((err: unknown) => {
        throw apiError('listing Clusters', this.#host.server, err);
      });
    let { items } = await list();
    let waited = false;
    const leases = await servingReplicas(this.#host, (ms) => {
      waited = true;
      say(`every tower replica's Lease looks lapsed: watching them for ${ms / 1000}s to be sure`);
    });
    // what a proxy may have written during the watch: the Clusters as they are now, not as they were
    if (waited) ({ items } = await list());
    const noneServes = leases !== undefined && leases.total > 0 && leases.live === 0;
    // a condition written after the last Lease lapsed (and a duration more) is someone else's, a proxy that is
    // not tower's: left alone
    const leftByReplicas = (c: ClusterCondition) => !(Date.parse(c.lastUpdateTime ?? '') > (leases?.lapsesAt ?? 0));
    const corrected: string[] = [];
    const rows: ClusterRow[] = [];
    for (const c of items) {
      if (c.spec?.connection?.type !== 'proxy') continue;
      const available = c.status?.conditions?.find((x) => x.type === 'AgentAvailable');
      if (noneServes && available?.status === 'True' && leftByReplicas(available)) {
        const problem = await this.#markUnserved(c);
        if (!problem) corrected.push(c.metadata.name);
        rows.push({
          name: c.metadata.name,
          agents: 0,
          lastSeen: available.lastUpdateTime ?? available.lastTransitionTime,
          note:
            `${LAPSED}; ` +
            (problem
              ? `its Cluster still says AgentAvailable True (${problem})`
              : 'its AgentAvailable is now Unknown, as the last replica would have left it'),
        });
        continue;
      }
      rows.push(this.#row(c, available));
    }
    rows.sort((a, b) => a.name.localeCompare(b.name));
    return {
      rows,
      ...(corrected.length
        ? { changed: `set AgentAvailable Unknown on Cluster ${corrected.join(', ')}: ${LAPSED}` }
        : {}),
    };
  }

  #row(c: KubeCluster, available: ClusterCondition | undefined): ClusterRow {
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
  }

  /**
   * Writes the `unserved` AgentAvailable on the Cluster as read (its resourceVersion a precondition, so a proxy
   * that started meanwhile wins). What kept it from doing so, or undefined when done.
   */
  async #markUnserved(c: KubeCluster): Promise<string | undefined> {
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const status = {
      ...c.status,
      conditions: (c.status?.conditions ?? []).map((x) =>
        x.type === 'AgentAvailable' ? unserved(x, LAPSED_WHY, now) : x,
      ),
    };
    try {
      await this.#host.updateCluster({ ...c, status });
      return undefined;
    } catch (err) {
      const code = apiStatus(err);
      if (code === 403) return 'this kubeconfig may not update Clusters to correct it';
      if (code === 409) return 'it changed while being corrected: run tower clusters again';
      return `cannot correct it: ${apiMessage(err)}`;
    }
  }
}

const LAPSED_WHY = "every replica's Lease has lapsed (the last one died)";
const LAPSED = `no tower proxy serves it: ${LAPSED_WHY}`;
