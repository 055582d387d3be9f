/**
 * What the proxy records of each cluster's agents (connected, how many, since, last seen, their
 * versions and addresses), written through the mode a moment after they change, batched per cluster.
 */
import type { Logger } from '../observe/log.ts';
import type { ProxyRecords } from '../mode/mode.ts';
import type { AgentSession } from '../tunnel/server.ts';
import type { SessionRegistry } from './registry.ts';

const STATUS_WRITE_DELAY_MS = 200;

export interface StatusWriterOptions {
  record: ProxyRecords;
  registry: SessionRegistry;
  /** whether the cluster is still known (a removed one gets no status) */
  knows: (name: string) => boolean;
  log: Logger;
}

export class StatusWriter {
  #opts: StatusWriterOptions;
  #timers = new Map<string, NodeJS.Timeout>();
  /** when each cluster's agents were last seen by this proxy */
  #lastSeen = new Map<string, string>();

  constructor(opts: StatusWriterOptions) {
    this.#opts = opts;
  }

  /** An agent of `name` came or went: either way it was seen now. */
  seen(name: string): void {
    this.#lastSeen.set(name, new Date().toISOString());
    this.schedule(name);
  }

  /** Writes `name`'s status soon, once for all changes until then. */
  schedule(name: string): void {
    if (this.#timers.has(name)) return;
    this.#timers.set(
      name,
      setTimeout(() => {
        this.#timers.delete(name);
        void this.write(name);
      }, STATUS_WRITE_DELAY_MS),
    );
  }

  /** Stops the writes scheduled. */
  stop(): void {
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
  }

  async write(name: string): Promise<void> {
    if (!this.#opts.knows(name)) return;
    const sessions = this.#opts.registry.of(name);
    const list = (f: (s: AgentSession) => string) => [...new Set(sessions.map(f))].join(',') || undefined;
    const since = sessions.length
      ? new Date(Math.min(...sessions.map((s) => s.connectedAt.getTime()))).toISOString()
      : undefined;
    try {
      await this.#opts.record.writeStatus(name, {
        connected: sessions.length > 0,
        agents: sessions.length,
        since,
        lastSeen: sessions.length ? new Date().toISOString() : this.#lastSeen.get(name),
        agentVersions: list((s) => s.config.version || 'unknown'),
        agentAddresses: list((s) => s.remote),
      });
    } catch (err) {
      this.#opts.log.warn('cannot write cluster status', { cluster: name, err: (err as Error).message });
    }
  }
}
