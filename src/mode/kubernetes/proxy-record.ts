import type { V1ConfigMap } from '@kubernetes/client-node';
import type { Logger } from '../../observe/log.ts';
import type { ClusterReport, ClusterRow, ProxyRecord, ProxyRecords } from '../mode.ts';
import { apiError, orUndefined, type HostCluster } from './api.ts';
import type { ClusterController } from './controller.ts';
import { replicaLeases } from './replicas.ts';
import { NAMESPACE, PROXY_OWNED_LABELS } from './resource.ts';

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

  /** The Cluster resources of type proxy and their AgentAvailable condition. */
  async report(): Promise<ClusterReport> {
    const { items } = await this.#host.listClusters().catch((err: unknown) => {
      throw apiError('listing Clusters', this.#host.server, err);
    });
    // a replica killed outright writes nothing on its way out: its Lease, lapsed, tells that none serves now
    // (no Lease at all: the last one withdrew it and wrote the conditions, or the proxy is not tower)
    const leases = await replicaLeases(this.#host);
    const noneServes = leases !== undefined && leases.total > 0 && leases.live === 0;
    const rows = items
      .filter((c) => c.spec?.connection?.type === 'proxy')
      .map((c): ClusterRow => {
        const available = c.status?.conditions?.find((x) => x.type === 'AgentAvailable');
        const initialized = c.status?.conditions?.some((x) => x.type === 'Initialized' && x.status === 'True');
        if (noneServes && available?.status === 'True') {
          return {
            name: c.metadata.name,
            agents: 0,
            lastSeen: available.lastUpdateTime ?? available.lastTransitionTime,
            note:
              "no tower proxy serves it: every replica's Lease has lapsed (the last one died); its Cluster " +
              'still says AgentAvailable, as it was last written',
          };
        }
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
    return { rows };
  }
}
