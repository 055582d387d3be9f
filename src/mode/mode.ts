import type { CertificateAuthority } from '../pki/ca.ts';
import type { Replica, Replicas } from '../proxy/replicas.ts';
import type { Logger } from '../observe/log.ts';

/** The registry of member clusters, behind which the proxy and the commands never see files or APIs. */
export interface Cluster {
  name: string;
  /** hex of 32 random bytes; agents present it in their `config` request */
  token: string;
  createdAt: string;
  /** opaque, changes on every write; update() refuses a stale one (optimistic concurrency) */
  revision: string;
  /** ports the proxy serves this cluster on besides the gateway (Kubernetes mode: the mc-<name> Service's targets) */
  serve?: ClusterServing;
  /**
   * Set when the stored record exists but cannot be used (unreadable, empty, malformed): the
   * cluster fails closed, its agents are refused, until the record is fixed or rewritten (--rotate).
   */
  problem?: string;
}

export interface ClusterServing {
  /** HTTPS, client certificates from tower's CA → the member kube-apiserver */
  kubernetesPort: number;
  /** plain HTTP → the member ks-apiserver */
  kubespherePort: number;
  /** host names and addresses clients use (the Service's ClusterIP and DNS names, a load balancer's) */
  names: string[];
}

/** What a store that reconciles (Kubernetes mode) needs from the proxy. */
export interface ReconcileContext {
  ca: CertificateAuthority;
  /** live agent sessions of a cluster: this replica's, or else the other replicas' */
  agents(name: string): number | Promise<number>;
  /** a reconcile failed (counted in the proxy's metrics) */
  onError?: () => void;
}

export interface ClusterStatus {
  connected: boolean;
  agents: number;
  /** when the earliest live session connected */
  since?: string;
  /** now, while connected; else when the last session went */
  lastSeen?: string;
  /** of the live sessions, comma-separated */
  agentVersions?: string;
  agentAddresses?: string;
}

/** Where the proxy serves, recorded by it so that `tower token` and `tower kubeconfig` can print addresses. */
export interface ProxyRecord {
  agentUrl: string;
  gatewayUrl: string;
  hostKeyFingerprint: string;
  pid?: number;
}

export type ClusterEvent = { type: 'added' | 'modified'; cluster: Cluster } | { type: 'deleted'; name: string };

export type KeyMaterialKind = 'ca' | 'ssh-host-key';
export type KeyMaterial = Record<string, string>;

export interface Closer {
  close(): void | Promise<void>;
}

export interface ReplicaTimes {
  /** a replica not heard of for this long is gone */
  leaseMs: number;
  renewMs: number;
}

export interface ClusterStore {
  readonly kind: 'file' | 'kubernetes';
  /** where the store keeps its data, for messages ("~/.tower", "cluster.kubesphere.io") */
  readonly location: string;
  get(name: string): Promise<Cluster | undefined>;
  list(): Promise<Cluster[]>;
  /** fails with StoreError EEXIST when the cluster exists */
  create(name: string, token: string): Promise<Cluster>;
  /** fails with StoreError ECONFLICT when `cluster.revision` is not the stored one */
  update(cluster: Cluster): Promise<Cluster>;
  writeStatus(name: string, status: ClusterStatus): Promise<void>;
  /** calls back for every change after the current state has been delivered as 'added' events */
  watch(onEvent: (event: ClusterEvent) => void): Closer;
  readProxyRecord(): Promise<ProxyRecord | undefined>;
  writeProxyRecord(record: ProxyRecord): Promise<void>;
  /**
   * File store: makes this process the one proxy serving the store; fails while another one does.
   * Kubernetes mode with leader election: resolves once this replica writes the Clusters (every
   * replica serves meanwhile).
   */
  claim(): Promise<Closer>;
  /** false while this replica serves but another one writes the Clusters (leader election) */
  readonly leading?: boolean;
  /** the proxy replicas serving this store, this one announced among them (one alone without) */
  replicas?(self: Replica, times: ReplicaTimes, log: Logger): Replicas;
  /** returns the stored material of `kind`, creating it with `create` once, race-free across processes */
  loadOrCreateKeyMaterial(kind: KeyMaterialKind, create: () => Promise<KeyMaterial>): Promise<KeyMaterial>;
  /**
   * Called once by the proxy that holds the store, before it lists and watches: a store with its own
   * controller (Kubernetes mode: ports, Services, conditions, kubeconfigs) starts it here.
   */
  reconcile?(ctx: ReconcileContext): Promise<void>;
  close(): void;
}
