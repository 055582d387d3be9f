/**
 * The member stage: which upstream a routed request goes to. One of this replica's agents of the
 * cluster when it holds one, else another replica that does (one hop: a forwarded request is never
 * forwarded again); on a retry, the next of the same kind.
 */
import type { Refusal } from '../../http/status.ts';
import type { ProxyMetrics } from '../metrics.ts';
import type { Peers } from '../peers.ts';
import type { Replica } from '../../replicas.ts';
import type { SessionRegistry } from '../registry.ts';
import type { AgentSession } from '../../tunnel/server.ts';
import { MemberApiserver, MemberKubesphere, type Upstream } from '../upstream.ts';
import { refusals } from './refusals.ts';
import type { Route, Target } from './route.ts';

/** an agent that left this long ago may be reconnecting: clients are asked to retry meanwhile */
export const RECONNECT_WINDOW_MS = 30_000;
/** what client-go's discovery (kubectl's first requests) and OpenAPI reads ask for */
const DISCOVERY = /^\/(api(\/v1)?|apis(\/[^/?]+){0,2}|version|openapi\/v[23](\/[^?]*)?)\/?(\?.*)?$/;

type Member = MemberApiserver | MemberKubesphere;

export interface MembersOptions {
  registry: SessionRegistry;
  /** the other replicas, where they exist */
  peers?: Peers;
  metrics?: ProxyMetrics;
}

export class Members {
  #opts: MembersOptions;
  /**
   * each session's upstreams, one per target: what a request reaches is decided by its route, never by what came first
   */
  #members = new WeakMap<AgentSession, Partial<Record<Target, Member>>>();

  constructor(opts: MembersOptions) {
    this.#opts = opts;
  }

  /**
   * The way to the route's member through one of this replica's agents: undefined when this replica
   * holds none (a replica may then), a 502 when the agent announced no such server.
   */
  local(route: Route): Way | Refusal | undefined {
    const session = this.#opts.registry.pick(route.cluster);
    if (!session) return undefined;
    const member = this.#member(session, route.target);
    if (!member.hostPort || member.hostPort.startsWith(':')) return refusals.notAnnounced(route.cluster, route.target);
    return new LocalWay(this, route, member);
  }

  /** The way through another replica that holds an agent of the cluster; a refusal when none does. */
  async elsewhere(route: Route, method: string): Promise<Way | Refusal> {
    const peers = this.#opts.peers;
    if (!peers || route.fromPeer) return this.noAgent(route, method);
    const replica = await peers.find(route.cluster);
    if (!replica) return this.noAgent(route, method);
    this.#opts.metrics?.peerForwards.inc({ replica: replica.id });
    return new PeerWay(peers, route, replica);
  }

  /** why no agent serves `route`, and whether waiting may help (see refusals.noAgent) */
  noAgent(route: Route, method: string): Refusal {
    return refusals.noAgent(route.cluster, {
      reconnecting: this.#opts.registry.leftWithin(route.cluster, RECONNECT_WINDOW_MS),
      discovery: method === 'GET' && DISCOVERY.test(route.path),
    });
  }

  /** another agent of the cluster here, none of `tried` */
  pick(route: Route, tried: ReadonlySet<unknown>): Upstream | undefined {
    const session = this.#opts.registry.pick(route.cluster, tried);
    return session ? this.#member(session, route.target) : undefined;
  }

  #member(session: AgentSession, target: Target): Member {
    let members = this.#members.get(session);
    if (!members) {
      members = {};
      this.#members.set(session, members);
    }
    return (members[target] ??= target === 'kubesphere' ? new MemberKubesphere(session) : new MemberApiserver(session));
  }
}

/** The upstreams a request may try, in order: `current` first, `next()` on a retry. */
export interface Way {
  readonly current: Upstream;
  /** how many upstreams were tried, `current` included */
  readonly tried: number;
  /** moves to another upstream of the same kind; undefined when there is none */
  next(): Promise<Upstream | undefined>;
}

class LocalWay implements Way {
  current: Upstream;
  #members: Members;
  #route: Route;
  #tried = new Set<unknown>();

  constructor(members: Members, route: Route, first: Upstream) {
    this.#members = members;
    this.#route = route;
    this.current = first;
    this.#tried.add(first.key);
  }

  get tried(): number {
    return this.#tried.size;
  }

  async next(): Promise<Upstream | undefined> {
    const next = this.#members.pick(this.#route, this.#tried);
    if (next) {
      this.current = next;
      this.#tried.add(next.key);
    }
    return next;
  }
}

class PeerWay implements Way {
  current: Upstream;
  #peers: Peers;
  #route: Route;
  #replica: Replica;
  #tried = new Set<string>();

  constructor(peers: Peers, route: Route, replica: Replica) {
    this.#peers = peers;
    this.#route = route;
    this.#replica = replica;
    this.current = peers.upstream(replica, route.target);
    this.#tried.add(replica.id);
  }

  get tried(): number {
    return this.#tried.size;
  }

  async next(): Promise<Upstream | undefined> {
    this.#peers.missed(this.#route.cluster, this.#replica);
    const replica = await this.#peers.find(this.#route.cluster, this.#tried);
    if (!replica) return undefined;
    this.#replica = replica;
    this.current = this.#peers.upstream(replica, this.#route.target);
    this.#tried.add(replica.id);
    return this.current;
  }
}
