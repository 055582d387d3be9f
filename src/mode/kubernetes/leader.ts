import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { V1MicroTime, type V1Lease } from '@kubernetes/client-node';
import type { Logger } from '../../observe/log.ts';
import { apiMessage, apiStatus, orUndefined, type HostCluster } from './api.ts';
import { PROXY_OWNED_LABELS } from './resource.ts';

export interface LeaseTimes {
  /** how long a lease holds after its last renewal (Go tower: 30 s) */
  leaseMs: number;
  /** the leader gives up when it could not renew for this long (15 s) */
  renewDeadlineMs: number;
  /** between attempts to acquire or renew (5 s) */
  retryMs: number;
}

export const GO_TOWER_LEASE: LeaseTimes = { leaseMs: 30_000, renewDeadlineMs: 15_000, retryMs: 5_000 };

/**
 * Leader election on a coordination.k8s.io Lease, as client-go's: a candidate takes the lease when
 * its holder has not renewed it for the lease duration (measured on the candidate's own clock,
 * from when it last saw the record change), the leader renews every retry period and steps down
 * when it could not renew within the renew deadline.
 */
export class LeaderElector {
  readonly identity = `${hostname()}_${randomBytes(8).toString('hex')}`;
  #host: HostCluster;
  #name: string;
  #namespace: string;
  #times: LeaseTimes;
  #log: Logger;
  #stopped = false;
  #leading = false;
  /** the record last seen, and when (local clock) it last changed */
  #observed: { key: string; at: number } | undefined;
  #renewing: Promise<void> | undefined;
  #abort = new AbortController();

  constructor(host: HostCluster, name: string, namespace: string, times: LeaseTimes, log: Logger) {
    this.#host = host;
    this.#name = name;
    this.#namespace = namespace;
    this.#times = times;
    this.#log = log;
  }

  get leading(): boolean {
    return this.#leading;
  }

  /** Waits until this process holds the lease; then renews it until release(), calling onLost if it cannot. */
  async acquire(onLost: (why: string) => void): Promise<void> {
    let waitingLogged = false;
    while (!this.#stopped) {
      const holder = await this.#tryAcquireOrRenew().catch((err: unknown) => {
        this.#log.warn('leader election: cannot read or write the lease', {
          lease: `${this.#namespace}/${this.#name}`,
          err: apiMessage(err),
        });
        return undefined;
      });
      if (holder === this.identity) break;
      if (!waitingLogged && holder) {
        this.#log.info('leader election: waiting for the lease', { lease: `${this.#namespace}/${this.#name}`, holder });
        waitingLogged = true;
      }
      await this.#sleep(this.#times.retryMs);
    }
    if (this.#stopped) return;
    this.#leading = true;
    this.#log.info('leader election: leading', { lease: `${this.#namespace}/${this.#name}`, identity: this.identity });
    this.#renewing = this.#renewLoop(onLost);
  }

  async #renewLoop(onLost: (why: string) => void): Promise<void> {
    let lastRenew = Date.now();
    while (!this.#stopped) {
      await this.#sleep(this.#times.retryMs);
      if (this.#stopped) return;
      try {
        const holder = await this.#tryAcquireOrRenew();
        if (holder === this.identity) {
          lastRenew = Date.now();
          continue;
        }
        if (holder !== undefined) {
          this.#leading = false;
          onLost(`the lease is now held by ${holder}`);
          return;
        }
        // a write conflict: not renewed this round, tried again until the deadline
      } catch (err) {
        this.#log.warn('leader election: cannot renew the lease', { err: apiMessage(err) });
      }
      if (Date.now() - lastRenew > this.#times.renewDeadlineMs) {
        this.#leading = false;
        onLost(`could not renew the lease for ${Math.round((Date.now() - lastRenew) / 1000)} s`);
        return;
      }
    }
  }

  /** Returns the holder after one attempt: ours when we hold (or just took) the lease. */
  async #tryAcquireOrRenew(): Promise<string | undefined> {
    const api = this.#host.coordination;
    const now = new V1MicroTime();
    const lease = await orUndefined(api.readNamespacedLease({ name: this.#name, namespace: this.#namespace }));
    const durationSeconds = Math.round(this.#times.leaseMs / 1000);
    if (!lease) {
      try {
        await api.createNamespacedLease({
          namespace: this.#namespace,
          body: {
            metadata: { name: this.#name, namespace: this.#namespace, labels: PROXY_OWNED_LABELS },
            spec: {
              holderIdentity: this.identity,
              leaseDurationSeconds: durationSeconds,
              acquireTime: now,
              renewTime: now,
              leaseTransitions: 0,
            },
          },
        });
        return this.identity;
      } catch (err) {
        if (apiStatus(err) === 409) return undefined; // another candidate created it first
        throw err;
      }
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const key = `${holder}|${String(spec.renewTime ?? '')}|${lease.metadata?.resourceVersion ?? ''}`;
    if (this.#observed?.key !== key) this.#observed = { key, at: Date.now() };
    const heldMs = (spec.leaseDurationSeconds ?? durationSeconds) * 1000;
    const expired = !holder || Date.now() - this.#observed.at > heldMs;
    if (holder !== this.identity && !expired) return holder;
    const body: V1Lease = {
      ...lease,
      spec: {
        holderIdentity: this.identity,
        leaseDurationSeconds: durationSeconds,
        acquireTime: holder === this.identity && spec.acquireTime ? new V1MicroTime(String(spec.acquireTime)) : now,
        renewTime: now,
        leaseTransitions: (spec.leaseTransitions ?? 0) + (holder === this.identity ? 0 : 1),
      },
    };
    try {
      await api.replaceNamespacedLease({ name: this.#name, namespace: this.#namespace, body });
      return this.identity;
    } catch (err) {
      if (apiStatus(err) === 409) return undefined; // someone else wrote it meanwhile
      throw err;
    }
  }

  /** Stops renewing; when leading, hands the lease back so that a follower takes over at once. */
  async release(): Promise<void> {
    this.#stopped = true;
    this.#abort.abort();
    await this.#renewing;
    if (!this.#leading) return;
    this.#leading = false;
    try {
      const lease = await this.#host.coordination.readNamespacedLease({ name: this.#name, namespace: this.#namespace });
      if (lease.spec?.holderIdentity !== this.identity) return;
      const body: V1Lease = {
        ...lease,
        spec: {
          ...lease.spec,
          holderIdentity: '',
          leaseDurationSeconds: 1,
          renewTime: new V1MicroTime(),
          acquireTime: lease.spec.acquireTime ? new V1MicroTime(String(lease.spec.acquireTime)) : undefined,
        },
      };
      await this.#host.coordination.replaceNamespacedLease({ name: this.#name, namespace: this.#namespace, body });
      this.#log.info('leader election: released the lease', { lease: `${this.#namespace}/${this.#name}` });
    } catch (err) {
      this.#log.warn('leader election: cannot release the lease (a follower takes over when it expires)', {
        err: apiMessage(err),
      });
    }
  }

  async #sleep(ms: number): Promise<void> {
    await sleep(ms, undefined, { signal: this.#abort.signal }).catch(() => undefined);
  }
}
