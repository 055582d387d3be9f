import { V1MicroTime, type V1Lease } from '@kubernetes/client-node';
import { serverIdProblem } from '../../config/names.ts';
import type { Logger } from '../../observe/log.ts';
import type { Replica, ReplicaTimes, Replicas } from '../../replicas.ts';
import { apiMessage, apiStatus, orUndefined, type HostCluster, type Watcher } from './api.ts';
import { NAMESPACE, PROXY_OWNED_LABELS } from './resource.ts';

export const REPLICA_LEASE_PREFIX = 'tower-proxy-';
const COMPONENT_LABEL = 'app.kubernetes.io/component';
const COMPONENT = 'proxy-replica';
const LABELS = { 'app.kubernetes.io/name': 'tower', [COMPONENT_LABEL]: COMPONENT, ...PROXY_OWNED_LABELS };
export const ADDRESS_ANNOTATION = 'tower.kubesphere.io/peer-address';
export const DRAINING_ANNOTATION = 'tower.kubesphere.io/draining';
/** how often the live set is worked out from what was last seen (local, no API call) */
const EVALUATE_MS = 1_000;

/**
 * Replicas from Leases `tower-proxy-<id>` in kubesphere-system, one per replica, labelled as
 * tower's: each renews its own, deletes it when it stops, and any replica deletes the ones that
 * expired. Expiry is measured on this replica's clock from when a renewal was seen (as client-go's
 * leader election does), so that clocks of other nodes do not matter.
 */
export class LeaseReplicas implements Replicas {
  readonly self: Replica;
  #host: HostCluster;
  #times: ReplicaTimes;
  #log: Logger;
  #watch: Watcher<V1Lease> | undefined;
  #renewTimer: NodeJS.Timeout | undefined;
  #evaluateTimer: NodeJS.Timeout | undefined;
  #listeners: (() => void)[] = [];
  /** per Lease name: the renewal last seen, and when (local clock) */
  #seen = new Map<string, { key: string; at: number }>();
  #live: Replica[] = [];
  #signature = '';
  #closed = false;
  /** Leases being deleted, so that an evaluation meanwhile does not ask again */
  #collecting = new Set<string>();
  /** when this replica last renewed its own Lease: while it cannot, the others' silence proves nothing */
  #renewedAt = Date.now();
  /** the API server's clock less this one's, as its answers' Date says (to the second): Lease times are its */
  #serverOffsetMs = 0;
  #apiLost = false;

  constructor(host: HostCluster, self: Replica, times: ReplicaTimes, log: Logger) {
    this.#host = host;
    this.self = self;
    this.#times = times;
    this.#log = log;
    this.#live = [self];
  }

  get #name(): string {
    return REPLICA_LEASE_PREFIX + this.self.id;
  }

  async start(): Promise<void> {
    await this.#renew();
    this.#watch = this.#host.watch<V1Lease>(
      `Leases in ${NAMESPACE}`,
      `/apis/coordination.k8s.io/v1/namespaces/${NAMESPACE}/leases`,
      () => this.#host.coordination.listNamespacedLease({ namespace: NAMESPACE }),
      this.#log,
    );
    for (const ev of ['add', 'update', 'delete'] as const) this.#watch.informer.on(ev, () => this.#evaluate());
    await this.#watch.start();
    this.#evaluate();
    this.#renewTimer = setInterval(() => {
      void this.#renew();
    }, this.#times.renewMs);
    this.#evaluateTimer = setInterval(() => this.#evaluate(), EVALUATE_MS);
    this.#renewTimer.unref();
    this.#evaluateTimer.unref();
    this.#log.info('replica announced', {
      serverId: this.self.id,
      lease: `${NAMESPACE}/${this.#name}`,
      address: this.self.address,
      replicas: this.#live.map((r) => r.id).join(','),
    });
  }

  live(): Replica[] {
    return this.#live;
  }

  onChange(listener: () => void): void {
    this.#listeners.push(listener);
  }

  async drain(): Promise<void> {
    this.self.draining = true;
    this.#evaluate();
    await this.#renew();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#renewTimer);
    clearInterval(this.#evaluateTimer);
    this.#watch?.stop();
    try {
      await this.#host.coordination.deleteNamespacedLease({ name: this.#name, namespace: NAMESPACE });
      this.#log.info('replica withdrawn', { lease: `${NAMESPACE}/${this.#name}` });
    } catch (err) {
      if (apiStatus(err) !== 404)
        this.#log.warn("cannot delete this replica's Lease (the others drop it when it expires)", {
          lease: `${NAMESPACE}/${this.#name}`,
          err: apiMessage(err),
        });
    }
  }

  /** Creates or renews this replica's Lease, with its address and whether it drains. */
  async #renew(): Promise<void> {
    if (this.#closed) return;
    const api = this.#host.coordination;
    const annotations: Record<string, string> = { [ADDRESS_ANNOTATION]: this.self.address };
    if (this.self.draining) annotations[DRAINING_ANNOTATION] = 'true';
    try {
      const read = await orUndefined(api.readNamespacedLeaseWithHttpInfo({ name: this.#name, namespace: NAMESPACE }));
      if (read) this.#learnClock(read.headers['date']);
      const lease = read?.data;
      // on the API server's clock (once an answer told it), so that a reader need not trust this one's
      const now = new V1MicroTime(Date.now() + this.#serverOffsetMs);
      const spec = {
        holderIdentity: this.self.id,
        leaseDurationSeconds: Math.max(1, Math.round(this.#times.leaseMs / 1000)),
        renewTime: now,
      };
      if (!lease) {
        const created = await api.createNamespacedLeaseWithHttpInfo({
          namespace: NAMESPACE,
          body: {
            metadata: { name: this.#name, namespace: NAMESPACE, labels: LABELS, annotations },
            spec: { ...spec, acquireTime: now },
          },
        });
        // the first Lease went out on this clock; the others' are read on the server's from now on (start()
        // watches them only after this)
        this.#learnClock(created.headers['date']);
        this.#renewedAt = Date.now();
        return;
      }
      const body: V1Lease = {
        ...lease,
        metadata: { ...lease.metadata, labels: { ...lease.metadata?.labels, ...LABELS }, annotations },
        spec: {
          ...lease.spec,
          ...spec,
          acquireTime: lease.spec?.acquireTime ? new V1MicroTime(String(lease.spec.acquireTime)) : now,
        },
      };
      await api.replaceNamespacedLease({ name: this.#name, namespace: NAMESPACE, body });
      this.#renewedAt = Date.now();
    } catch (err) {
      // a conflict is settled at the next renewal; anything else is said
      if (apiStatus(err) !== 409)
        this.#log.warn("cannot renew this replica's Lease", {
          lease: `${NAMESPACE}/${this.#name}`,
          err: apiMessage(err),
        });
    }
  }

  /** The offset to the API server's clock, from an answer's Date (whole seconds: read as the middle of one). */
  #learnClock(date: string | undefined): void {
    const server = Date.parse(date ?? '');
    if (!Number.isNaN(server)) this.#serverOffsetMs = server + 500 - Date.now();
  }

  /** Works out the live replicas from the cache; reports a change; deletes Leases long expired. */
  #evaluate(): void {
    if (!this.#watch || this.#closed) return;
    const now = Date.now();
    // a host API this replica cannot reach stops every renewal it would see: the others are kept as
    // they were (else each replica, alone in its own view, would have the agents drop the others)
    if (now - this.#renewedAt > Math.min(1.5 * this.#times.renewMs, this.#times.leaseMs / 2)) {
      if (!this.#apiLost)
        this.#log.warn(
          "cannot renew this replica's Lease: the other replicas are kept as last seen until the host API answers",
          { lease: `${NAMESPACE}/${this.#name}` },
        );
      this.#apiLost = true;
      for (const seen of this.#seen.values()) seen.at = now;
      return;
    }
    if (this.#apiLost) this.#log.info('the host API answers again: replicas are judged by their Leases again');
    this.#apiLost = false;
    const live: Replica[] = [this.self];
    const names = new Set<string>();
    for (const lease of this.#watch.informer.list()) {
      const name = lease.metadata?.name ?? '';
      if (!isReplicaLease(lease)) continue;
      names.add(name);
      if (name === this.#name) continue;
      const renewed = String(lease.spec?.renewTime ?? '');
      const key = `${lease.spec?.holderIdentity ?? ''}|${renewed}|${lease.metadata?.resourceVersion ?? ''}`;
      let seen = this.#seen.get(name);
      if (!seen || seen.key !== key) {
        // first sight of a Lease renewed long ago (by a replica that died before this one started) counts from then,
        // its renewal (on the API server's clock) read on this one's
        const at = seen ? now : Math.min(now, Date.parse(renewed) - this.#serverOffsetMs || now);
        seen = { key, at };
        this.#seen.set(name, seen);
      }
      const heldMs = (lease.spec?.leaseDurationSeconds ?? Math.round(this.#times.leaseMs / 1000)) * 1000;
      if (now - seen.at > 2 * heldMs) {
        void this.#collect(lease);
        continue;
      }
      const replica = liveReplica(lease, seen.at, now);
      if (replica) live.push(replica);
    }
    for (const n of this.#seen.keys()) if (!names.has(n)) this.#seen.delete(n);
    live.sort((a, b) => (a === this.self ? -1 : b === this.self ? 1 : a.id < b.id ? -1 : 1));
    const signature = live.map((r) => `${r.id}@${r.address}${r.draining ? '!' : ''}`).join(',');
    this.#live = live;
    if (signature === this.#signature) return;
    const first = this.#signature === '';
    this.#signature = signature;
    if (!first) this.#log.info('replicas changed', { replicas: signature });
    for (const l of this.#listeners) l();
  }

  /** Deletes a Lease that expired long ago, unless it was renewed meanwhile (resourceVersion precondition). */
  async #collect(lease: V1Lease): Promise<void> {
    const name = lease.metadata!.name!;
    if (this.#collecting.has(name)) return;
    this.#collecting.add(name);
    try {
      await this.#host.coordination.deleteNamespacedLease({
        name,
        namespace: NAMESPACE,
        body: { preconditions: { resourceVersion: lease.metadata?.resourceVersion } },
      });
      this.#log.info('deleted the Lease of a replica that is gone', { lease: `${NAMESPACE}/${name}` });
    } catch (err) {
      if (apiStatus(err) !== 404 && apiStatus(err) !== 409)
        this.#log.debug(1, 'cannot delete an expired replica Lease', { lease: name, err: apiMessage(err) });
    } finally {
      this.#collecting.delete(name);
    }
  }
}

function validAddress(a: string): boolean {
  return a.length <= 300 && /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(a);
}

/** A Lease of a tower replica, by its label and name (the others in the namespace are not ours to judge). */
function isReplicaLease(lease: V1Lease): boolean {
  return (
    lease.metadata?.labels?.[COMPONENT_LABEL] === COMPONENT &&
    (lease.metadata?.name ?? '').startsWith(REPLICA_LEASE_PREFIX)
  );
}

/** The replica a Lease of tower's names, when its holder and address are what the replicas would serve with. */
function replicaOf(lease: V1Lease): Replica | undefined {
  const id = lease.spec?.holderIdentity ?? '';
  const address = lease.metadata?.annotations?.[ADDRESS_ANNOTATION] ?? '';
  if (!isReplicaLease(lease) || serverIdProblem(id) || !validAddress(address)) return undefined;
  if (!((lease.spec?.leaseDurationSeconds ?? 0) >= 1)) return undefined; // a replica always says how long
  if (`${REPLICA_LEASE_PREFIX}${id}` !== lease.metadata?.name) return undefined;
  return { id, address, draining: lease.metadata?.annotations?.[DRAINING_ANNOTATION] === 'true' };
}

/**
 * The one rule of a replica's liveness, for the replicas and `tower clusters` alike: the replica a Lease names
 * (`replicaOf`), when it was renewed (`renewedMs`) within its duration before `nowMs`. undefined when it lapsed
 * or is not a replica's.
 */
function liveReplica(lease: V1Lease, renewedMs: number, nowMs: number): Replica | undefined {
  const heldMs = (lease.spec?.leaseDurationSeconds ?? 0) * 1000;
  return nowMs - renewedMs <= heldMs ? replicaOf(lease) : undefined;
}

/** how long `tower clusters` watches Leases that look lapsed before it believes them, at most */
const CONFIRM_MAX_MS = 15_000;

export interface ServingReplicas {
  /** the Leases of tower replicas (as `replicaOf` reads them) */
  total: number;
  /** how many of them serve: live and not draining */
  live: number;
  /** when the last of them lapses (ms), plus its duration again, for what clocks may still disagree */
  lapsesAt: number;
}

/**
 * Which tower replicas serve, as their Leases say (for `tower clusters`); undefined when they cannot be read.
 * A replica writes its renewal time on the API server's clock, as the server's answers' Date tells it (older
 * versions wrote their own), so it is judged against the server's Date, with a second's slack. When every
 * Lease looks lapsed, that is confirmed by reading them again each second for their longest duration (at most
 * 15 s, `onConfirm` told first): a Lease written meanwhile (a replica renewing, whatever its clock) serves.
 */
export async function servingReplicas(
  host: HostCluster,
  onConfirm: (ms: number) => void = () => undefined,
): Promise<ServingReplicas | undefined> {
  const read = async () => {
    const answer = await host.coordination.listNamespacedLeaseWithHttpInfo({
      namespace: NAMESPACE,
      labelSelector: `${COMPONENT_LABEL}=${COMPONENT}`,
    });
    const serverNow = Date.parse(answer.headers['date'] ?? '');
    return {
      now: Number.isNaN(serverNow) ? Date.now() : serverNow - 1_000,
      leases: answer.data.items.filter((l) => replicaOf(l) !== undefined),
    };
  };
  try {
    const { now, leases } = await read();
    const renewed = (l: V1Lease) => Date.parse(String(l.spec?.renewTime ?? ''));
    const held = (l: V1Lease) => (l.spec?.leaseDurationSeconds ?? 0) * 1000;
    const lapsesAt = Math.max(0, ...leases.map((l) => renewed(l) + 2 * held(l)).filter((t) => !Number.isNaN(t)));
    const live = leases.filter((l) => liveReplica(l, renewed(l), now)?.draining === false).length;
    if (live > 0 || leases.length === 0) return { total: leases.length, live, lapsesAt };
    const version = new Map(leases.map((l) => [l.metadata?.name, l.metadata?.resourceVersion]));
    const confirmMs = Math.min(CONFIRM_MAX_MS, Math.max(...leases.map(held)));
    onConfirm(confirmMs);
    for (let waited = 0; waited < confirmMs; waited += 1_000) {
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      const again = await read();
      const written = again.leases.filter((l) => version.get(l.metadata?.name) !== l.metadata?.resourceVersion);
      if (written.some((l) => !replicaOf(l)?.draining)) return { total: again.leases.length, live: 1, lapsesAt };
    }
    return { total: leases.length, live: 0, lapsesAt };
  } catch {
    return undefined;
  }
}
