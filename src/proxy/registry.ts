import { EventEmitter } from 'node:events';
import type { AgentSession } from '../tunnel/server.ts';

/**
 * Live agent sessions by cluster. Several agents may serve one cluster: requests are spread over
 * them round-robin, and the cluster is disconnected only when the last one goes.
 */
export class SessionRegistry extends EventEmitter {
  #byCluster = new Map<string, AgentSession[]>();
  #next = new Map<string, number>();
  /** when each cluster's last session here went (ms), for a refusal that says whether waiting may help */
  #lastGone = new Map<string, number>();

  add(session: AgentSession): void {
    const list = this.#byCluster.get(session.name) ?? [];
    list.push(session);
    this.#byCluster.set(session.name, list);
    session.once('close', () => this.#remove(session));
    this.emit('change', session.name, list.length);
  }

  /** A live session of `name`, taking turns among them, none of `except`; undefined when there is none. */
  pick(name: string, except?: ReadonlySet<unknown>): AgentSession | undefined {
    const list = this.#byCluster.get(name);
    if (!list || list.length === 0) return undefined;
    for (let n = 0; n < list.length; n++) {
      const i = (this.#next.get(name) ?? 0) % list.length;
      this.#next.set(name, i + 1);
      const s = list[i]!;
      if (!s.closed && !except?.has(s)) return s;
    }
    return undefined;
  }

  /** whether the last agent of `name` here went within `ms` (it may be reconnecting) */
  leftWithin(name: string, ms: number): boolean {
    const gone = this.#lastGone.get(name);
    return gone !== undefined && Date.now() - gone < ms;
  }

  count(name: string): number {
    return this.#byCluster.get(name)?.length ?? 0;
  }

  /** sessions per cluster, for clusters with any */
  *counts(): IterableIterator<[string, number]> {
    for (const [name, list] of this.#byCluster) yield [name, list.length];
  }

  /** every live session, of every cluster */
  *sessions(): IterableIterator<AgentSession> {
    for (const list of this.#byCluster.values()) yield* list;
  }

  /** the live sessions of `name`, oldest first */
  of(name: string): readonly AgentSession[] {
    return this.#byCluster.get(name) ?? [];
  }

  /** Closes the sessions of `name` for which `which` holds (all by default). */
  close(name: string, which: (s: AgentSession) => boolean = () => true): number {
    const victims = (this.#byCluster.get(name) ?? []).filter(which);
    for (const s of victims) s.close();
    return victims.length;
  }

  closeAll(): void {
    for (const name of [...this.#byCluster.keys()]) this.close(name);
  }

  #remove(session: AgentSession): void {
    const list = this.#byCluster.get(session.name);
    if (!list) return;
    const i = list.indexOf(session);
    if (i < 0) return;
    list.splice(i, 1);
    if (list.length === 0) {
      this.#byCluster.delete(session.name);
      this.#next.delete(session.name);
      this.#lastGone.set(session.name, Date.now());
    }
    this.emit('change', session.name, list.length);
  }
}
