import type { Logger } from '../../observe/log.ts';
import type { Replica, ReplicaTimes, Replicas } from '../../replicas.ts';
import type { Closer, Mode, ReconcileContext } from '../mode.ts';
import { HostCluster } from './api.ts';
import { KubernetesClusters } from './clusters.ts';
import { ClusterController } from './controller.ts';
import { ClusterRequests } from './issued.ts';
import { SecretKeys } from './keys.ts';
import { LeaderElector, type LeaseTimes } from './leader.ts';
import { KubernetesProxyRecord } from './proxy-record.ts';
import { LeaseReplicas } from './replicas.ts';
import { KubernetesRevocations } from './revocations.ts';
import { NAMESPACE } from './resource.ts';

const LEASE = 'tower';

export interface KubernetesModeOptions {
  /** host kubeconfig path; undefined: in-cluster service account */
  kubeconfig: string | undefined;
  log: Logger;
  /** when set, only the holder of the Lease writes the Clusters; claim() waits for it */
  leaderElection?: { times: LeaseTimes };
}

/**
 * Kubernetes mode: KubeSphere's Cluster resources are the registry; tower's CA, host key and
 * proxy record live in kubesphere-system (Secrets tower-ca and tower-ssh-host-key, ConfigMap
 * tower-proxy). Every replica serves, each announced by a Lease of its own; the proxy runs the
 * ClusterController through reconcile(), and with leader election only the Lease holder writes.
 */
export class KubernetesMode implements Mode {
  readonly host: HostCluster;
  readonly clusters: KubernetesClusters;
  readonly keys: SecretKeys;
  readonly proxyRecord: KubernetesProxyRecord;
  readonly issuedByProxy: ClusterRequests;
  readonly revocations: KubernetesRevocations;
  #opts: KubernetesModeOptions;
  #controller: ClusterController | undefined;
  #leading: boolean;

  constructor(opts: KubernetesModeOptions) {
    this.#opts = opts;
    this.host = new HostCluster(opts.kubeconfig);
    const controller = () => this.#controller;
    this.clusters = new KubernetesClusters(this.host, controller);
    this.keys = new SecretKeys(this.host, this.clusters.location);
    this.proxyRecord = new KubernetesProxyRecord(this.host, opts.log, controller);
    this.issuedByProxy = new ClusterRequests(this.clusters, this.host.server);
    this.revocations = new KubernetesRevocations(this.host);
    this.#leading = !opts.leaderElection;
  }

  get leading(): boolean {
    return this.#leading;
  }

  replicas(self: Replica, times: ReplicaTimes, log: Logger): Replicas {
    return new LeaseReplicas(this.host, self, times, log);
  }

  async reconcile(ctx: ReconcileContext): Promise<void> {
    this.#controller = new ClusterController(
      this.host,
      { ...ctx, log: this.#opts.log },
      (ev) => this.clusters.deliver(ev),
      this.#leading,
    );
    await this.#controller.start();
  }

  async claim(stop?: AbortSignal): Promise<Closer> {
    await this.host.requireNamespace();
    const le = this.#opts.leaderElection;
    if (!le || stop?.aborted) return { close: () => undefined };
    const elector = new LeaderElector(this.host, LEASE, NAMESPACE, le.times, this.#opts.log);
    // waiting for a Lease whose holder died takes its whole duration: a replica told to stop meanwhile
    // stops waiting, or its campaign would hold the process after its drain
    const giveUp = () => void elector.release();
    stop?.addEventListener('abort', giveUp, { once: true });
    // a replica that loses the lease keeps serving and campaigns again; its controller only reads meanwhile
    const campaign = async (): Promise<void> => {
      await elector.acquire((why) => {
        this.#leading = false;
        this.#controller?.follow();
        this.#opts.log.error('leader election lost; this replica serves on and campaigns again', { why });
        void campaign();
      });
      if (!elector.leading) return;
      this.#leading = true;
      this.#controller?.lead();
    };
    await campaign();
    return {
      close: async () => {
        stop?.removeEventListener('abort', giveUp);
        this.#leading = false;
        this.#controller?.follow();
        await elector.release();
      },
    };
  }

  async withdraw(): Promise<void> {
    await this.#controller?.withdraw();
  }

  close(): void {
    this.#controller?.stop();
    this.clusters.close();
  }
}
