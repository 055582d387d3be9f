/**
 * Replica counting, neutral between the modes that announce replicas and the proxy that serves with
 * them (as Konnectivity's servercounter): who the replicas are, not how they are found.
 */

/** One proxy replica as the others see it. */
export interface Replica {
  id: string;
  /** host:port of its gateway, where peers forward to it (mutual TLS from tower's CA) */
  address: string;
  /** it is shutting down: no new agents or forwarded requests go there */
  draining: boolean;
}

/** How replicas announce themselves to each other. */
export interface ReplicaTimes {
  /** a replica not heard of for this long is gone */
  leaseMs: number;
  /** between renewals of this replica's own announcement */
  renewMs: number;
}

/**
 * The proxy replicas that serve one mode, this one included. Each replica announces itself
 * (Kubernetes mode: a Lease of its own) and learns of the others; a change is reported through
 * onChange. Nothing here knows which clusters a replica serves: peers are asked when it matters.
 */
export interface Replicas {
  readonly self: Replica;
  /** announces this replica and loads the others; resolves once they are known */
  start(): Promise<void>;
  /** live replicas, this one first */
  live(): Replica[];
  onChange(listener: () => void): void;
  /** tells the others that this replica is draining */
  drain(): Promise<void>;
  /** withdraws this replica */
  close(): Promise<void>;
}

/** One replica alone (the file mode serves one proxy per data dir). */
export class SoloReplica implements Replicas {
  readonly self: Replica;
  #listeners: (() => void)[] = [];

  constructor(self: Replica) {
    this.self = self;
  }

  async start(): Promise<void> {}
  live(): Replica[] {
    return [this.self];
  }
  onChange(listener: () => void): void {
    this.#listeners.push(listener);
  }

  async drain(): Promise<void> {
    this.self.draining = true;
    for (const l of this.#listeners) l();
  }

  async close(): Promise<void> {}
}
