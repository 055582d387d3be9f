/**
 * The deployment mode: where tower keeps its clusters, keys and records, and what that place can do.
 * One Mode is picked from the flags (`openMode` in open.ts): the file mode (a data dir, one proxy) or
 * the Kubernetes mode (KubeSphere's Cluster resources, several replicas). It is made of narrow parts,
 * and its optional capabilities say what only one mode does: commands and the proxy ask for a part
 * or a capability, never which mode it is.
 */
import type { Logger } from '../observe/log.ts';
import type { CertificateAuthority } from '../pki/ca.ts';
import type { KeyStore } from '../pki/keys.ts';
import type { CertificateFacts, Revocation, RevocationList } from '../pki/revocations.ts';
import type { Replica, ReplicaTimes, Replicas } from '../replicas.ts';

/** A member cluster as tower knows it: its name and the token its agents present. */
export interface Cluster {
  name: string;
  /** hex of 32 random bytes; agents present it in their `config` request */
  token: string;
  createdAt: string;
  /** opaque, changes on every write; update() refuses a stale one (optimistic concurrency) */
  revision: string;
  /**
   * ports the proxy serves this cluster on besides the gateway (Kubernetes mode: the mc-<name>
   * Service's targets)
   */
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

export type ClusterEvent = { type: 'added' | 'modified'; cluster: Cluster } | { type: 'deleted'; name: string };

export interface Closer {
  close(): void | Promise<void>;
}

/** The registry of member clusters, behind which the proxy and the commands never see files or APIs. */
export interface ClusterRecords {
  /** where the records live, for messages ("~/.tower", "clusters.cluster.kubesphere.io at …") */
  readonly location: string;
  get(name: string): Promise<Cluster | undefined>;
  list(): Promise<Cluster[]>;
  /** fails with StoreError EEXIST when the cluster exists */
  create(name: string, token: string): Promise<Cluster>;
  /** fails with NotFoundError when it does not, with ConflictError when `cluster.revision` is not the stored one */
  update(cluster: Cluster): Promise<Cluster>;
  /**
   * Unregisters `name`: its token stops working. Fails with NotFoundError when there is no such
   * cluster, and in a mode where clusters belong to someone else (KubeSphere's), with what to do instead.
   */
  delete(name: string): Promise<void>;
  /** calls back for every change after the current state has been delivered as 'added' events */
  watch(onEvent: (event: ClusterEvent) => void): Closer;
}

/** What the proxy writes about a cluster's agents. */
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

/** One row of `tower clusters`. */
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

/** What `tower clusters` shows. */
export interface ClusterReport {
  rows: ClusterRow[];
  /** said beside a table when the rows are not the whole truth (no proxy running) */
  note?: string;
  /** said instead of an empty table, when the mode has something better to say */
  whenEmpty?: string;
  /** what reading them changed (on stderr, whatever the output format) */
  changed?: string;
}

/** What the running proxy records for the commands: where it serves, and each cluster's agents. */
export interface ProxyRecords {
  read(): Promise<ProxyRecord | undefined>;
  write(record: ProxyRecord): Promise<void>;
  /** the proxy's word on a cluster's agents, after every change of them */
  writeStatus(name: string, status: ClusterStatus): Promise<void>;
  /** every cluster with its agents, as the proxy last recorded them; `say` tells the user of a wait */
  report(say?: (line: string) => void): Promise<ClusterReport>;
}

/** What a mode that reconciles (Kubernetes mode) needs from the proxy. */
export interface ReconcileContext {
  ca: CertificateAuthority;
  /** live agent sessions of a cluster: this replica's, or else the other replicas' */
  agents(name: string): number | Promise<number>;
  /** whether `tower revoke` revoked a certificate: a kubeconfig the mode wrote with it is issued anew */
  revoked?: (facts: CertificateFacts) => boolean;
  /** `fn` runs whenever a new revocation list is read, so that `revoked` is asked again at once */
  onRevised?: (fn: () => void) => void;
  /** a reconcile failed (counted in the proxy's metrics) */
  onError?: () => void;
}

/**
 * Kubernetes mode: the proxy, not the command, issues a cluster's token and kubeconfig. A command
 * makes the request (KubeSphere's Cluster resource) and waits for the proxy to fill it in.
 */
export interface IssuedByProxy {
  /** where the proxy that issues them works, for messages (the host cluster's API server) */
  readonly server: string;
  /**
   * Makes the request for `name` unless it exists; says what it did, and gives the cluster when it
   * has a token already. Fails with ENOTPROXY when a record of that name is not one tower serves.
   */
  request(name: string): Promise<{ note: string; cluster?: Cluster }>;
  /** whether a request for `name` exists */
  requested(name: string): Promise<boolean>;
  /** the cluster, once the proxy has issued its token; NotFoundError when its request went meanwhile */
  issued(name: string): Promise<Cluster | undefined>;
  /** the cluster's kubeconfig, once an agent has connected; NotFoundError when its request went meanwhile */
  kubeconfig(name: string): Promise<string | undefined>;
}

/** Revoked client certificates: `tower revoke` adds to the list, every proxy replica reads it. */
export interface RevocationRecords {
  /** where the list lives, for messages */
  readonly location: string;
  /** the list (empty when none was written), or why the stored one is unusable; rejects when it cannot be read now */
  read(): Promise<RevocationList | string>;
  /** adds `r` and gives the whole list; fails with StoreError when the stored one is unusable */
  add(r: Revocation): Promise<RevocationList>;
}

export interface Mode {
  readonly clusters: ClusterRecords;
  readonly revocations: RevocationRecords;
  /** tower's CA and the proxy's SSH host key */
  readonly keys: KeyStore;
  readonly proxyRecord: ProxyRecords;
  /**
   * File mode: makes this process the one proxy serving the data dir; fails while another one does.
   * Kubernetes mode with leader election: resolves once this replica writes the Clusters (every
   * replica serves meanwhile), or at once, never having written, when `stop` aborts first (a replica
   * told to drain while another holds the Lease).
   */
  claim(stop?: AbortSignal): Promise<Closer>;
  /** several replicas serve this mode: the set of them, this one announced among them */
  replicas?(self: Replica, times: ReplicaTimes, log: Logger): Replicas;
  /** false while this replica serves but another one writes the Clusters (leader election) */
  readonly leading?: boolean;
  /**
   * Called once by the proxy that holds the mode, before it lists and watches: a mode with its own
   * controller (Kubernetes mode: ports, Services, conditions, kubeconfigs) starts it here.
   */
  reconcile?(ctx: ReconcileContext): Promise<void>;
  /**
   * The last replica is stopping and no other serves: where the mode keeps the agents' status in the
   * clusters' records (Kubernetes mode: AgentAvailable), it says now that none is available, rather than
   * leaving "available" until a proxy starts again.
   */
  withdraw?(): Promise<void>;
  /** the commands that register clusters or print kubeconfigs ask the proxy for them */
  readonly issuedByProxy?: IssuedByProxy;
  close(): void;
}
