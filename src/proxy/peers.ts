/**
 * Replicas reaching each other: a replica without a session for a cluster asks the others which
 * one holds one, and forwards the request there (one hop, mutual TLS from tower's CA). Peers
 * are found through Replicas; nothing keeps a shared map of clusters.
 */
import { request as httpRequest, type Agent, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import type { Logger } from '../observe/log.ts';
import { forwardedHeaders } from './gateway/headers.ts';
import type { Route, Target } from './gateway/route.ts';
import { encodeIdentity, PEER_API, PEER_HEADERS, type PeerSessions, type PeerSignature } from './peer-protocol.ts';
import type { Replica, Replicas } from '../replicas.ts';
import { ChannelAgent, type Upstream } from './upstream.ts';

const LOOKUP_TIMEOUT_MS = 2_000;
const FOUND_TTL_MS = 1_000;
const NUDGE_DELAY_MS = 200;
const MAX_ANSWER_BYTES = 1024 * 1024;
const CONNECT_TIMEOUT_MS = 5_000;
const IDLE_SOCKET_TIMEOUT_MS = 60_000;

export interface PeersOptions {
  replicas: Replicas;
  /** this replica's client certificate (URI SAN urn:tower:peer:<id>) and tower's CA */
  tls: { cert: string; key: string; caPem: string };
  /** signs and checks forwarded requests */
  signature: PeerSignature;
  log: Logger;
}

/** This replica's view of the others: which holds a cluster, forwarding to it, and nudges. */
export class Peers {
  readonly signature: PeerSignature;
  #opts: PeersOptions;
  #context: SecureContext;
  #upstreams = new Map<string, PeerUpstream>();
  #lookups = new Map<string, Promise<Replica | undefined>>();
  #found = new Map<string, { replica: Replica; until: number }>();
  #nudges = new Set<string>();
  #nudgeTimer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(opts: PeersOptions) {
    this.#opts = opts;
    this.signature = opts.signature;
    this.#context = createSecureContext({ cert: opts.tls.cert, key: opts.tls.key, ca: opts.tls.caPem });
    opts.replicas.onChange(() => this.#forgetGone());
  }

  /** the other live replicas, those that do not drain first */
  others(): Replica[] {
    const self = this.#opts.replicas.self.id;
    const list = this.#opts.replicas.live().filter((r) => r.id !== self);
    return [...list.filter((r) => !r.draining), ...list.filter((r) => r.draining)];
  }

  /**
   * A replica that holds a session of `cluster`, none of `except`: asked of all at once, the first
   * that has one wins (a draining one only when no other has). Concurrent lookups of a cluster share one.
   */
  find(cluster: string, except: ReadonlySet<string> = new Set()): Promise<Replica | undefined> {
    const hit = this.#found.get(cluster);
    if (hit && hit.until <= Date.now()) this.#found.delete(cluster);
    else if (hit && !except.has(hit.replica.id) && this.others().some((r) => r.id === hit.replica.id))
      return Promise.resolve(hit.replica);
    const key = `${cluster}\0${[...except].sort().join(',')}`;
    let p = this.#lookups.get(key);
    if (!p) {
      p = this.#lookup(cluster, except).finally(() => this.#lookups.delete(key));
      this.#lookups.set(key, p);
    }
    return p;
  }

  async #lookup(cluster: string, except: ReadonlySet<string>): Promise<Replica | undefined> {
    const candidates = this.others().filter((r) => !except.has(r.id));
    if (candidates.length === 0) return undefined;
    const answers = candidates.map((r) =>
      this.sessions(r, [cluster]).then(
        (a) => ((a.sessions[cluster] ?? 0) > 0 ? { r, draining: a.draining } : undefined),
        () => undefined,
      ),
    );
    // the first ready replica that has one, without waiting for the slowest
    let drainingOne: Replica | undefined;
    const found = await new Promise<Replica | undefined>((resolve) => {
      let left = answers.length;
      for (const a of answers) {
        void a.then((x) => {
          if (x && !x.draining) resolve(x.r);
          if (x?.draining) drainingOne ??= x.r;
          if (--left === 0) resolve(drainingOne);
        });
      }
    });
    if (found) this.#found.set(cluster, { replica: found, until: Date.now() + FOUND_TTL_MS });
    return found;
  }

  /** Forgets where `cluster` was found (a forward there failed). */
  missed(cluster: string, replica: Replica): void {
    if (this.#found.get(cluster)?.replica.id === replica.id) this.#found.delete(cluster);
  }

  /** Agents of `cluster` on the other replicas, summed; a replica that does not answer counts none. */
  async sessionsElsewhere(cluster: string): Promise<number> {
    const counts = await Promise.all(
      this.others().map((r) =>
        this.sessions(r, [cluster]).then(
          (a) => a.sessions[cluster] ?? 0,
          () => 0,
        ),
      ),
    );
    return counts.reduce((a, b) => a + b, 0);
  }

  /** Asks `replica` how many sessions it holds of each of `clusters`. */
  sessions(replica: Replica, clusters: string[]): Promise<PeerSessions> {
    const q = clusters.map((c) => `cluster=${encodeURIComponent(c)}`).join('&');
    return this.#call(replica, 'GET', `${PEER_API}sessions?${q}`).then((body) => {
      const a = JSON.parse(body) as Partial<PeerSessions> | null;
      if (a?.server !== replica.id) throw new Error(`${replica.address} is not replica ${replica.id}`);
      if (typeof a.sessions !== 'object' || a.sessions === null || typeof a.draining !== 'boolean')
        throw new Error('malformed answer');
      // counts only: anything else a peer says of a cluster is none
      const sessions: Record<string, number> = {};
      for (const c of clusters) {
        const n = (a.sessions as Record<string, unknown>)[c];
        if (Number.isSafeInteger(n) && (n as number) > 0) sessions[c] = n as number;
      }
      return { server: a.server, draining: a.draining, sessions };
    });
  }

  /**
   * Tells the others (batched) that this replica's agents of `cluster` came or went: the one that writes conditions
   * looks again.
   */
  nudge(cluster: string): void {
    if (this.#closed) return;
    this.#nudges.add(cluster);
    this.#nudgeTimer ??= setTimeout(() => {
      this.#nudgeTimer = undefined;
      const body = JSON.stringify({ clusters: [...this.#nudges] });
      this.#nudges.clear();
      for (const r of this.others()) {
        this.#call(r, 'POST', `${PEER_API}changed`, body).catch((err: Error) =>
          this.#opts.log.debug(1, 'cannot tell a replica of agent changes', { replica: r.id, err: err.message }),
        );
      }
    }, NUDGE_DELAY_MS);
  }

  /** How a gateway reaches `cluster`'s `target` through `replica`. */
  upstream(replica: Replica, target: Target): PeerUpstream {
    const key = `${replica.id}@${replica.address}/${target}`;
    let u = this.#upstreams.get(key);
    if (!u) {
      u = new PeerUpstream(replica, target, this.#context, this.signature);
      this.#upstreams.set(key, u);
    }
    return u;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#nudgeTimer);
    for (const u of this.#upstreams.values()) u.pool.destroy();
    this.#upstreams.clear();
  }

  #forgetGone(): void {
    const live = new Set(this.others().map((r) => `${r.id}@${r.address}`));
    for (const [key, u] of this.#upstreams) {
      if (!live.has(`${u.replica.id}@${u.replica.address}`)) {
        u.pool.destroy();
        this.#upstreams.delete(key);
      }
    }
  }

  #call(replica: Replica, method: string, path: string, body?: string): Promise<string> {
    const u = this.upstream(replica, 'kubernetes');
    return new Promise((resolve, reject) => {
      const req = httpRequest({
        agent: u.pool,
        method,
        path,
        headers: { host: replica.address, ...(body ? { 'content-type': 'application/json' } : {}) },
      });
      const timer = setTimeout(
        () => req.destroy(new Error(`no answer within ${LOOKUP_TIMEOUT_MS} ms`)),
        LOOKUP_TIMEOUT_MS,
      );
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.on('response', (res: IncomingMessage) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          text += d;
          if (text.length > MAX_ANSWER_BYTES) req.destroy(new Error('answer too large'));
        });
        res.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
        res.on('end', () => {
          clearTimeout(timer);
          if ((res.statusCode ?? 0) >= 300)
            reject(new Error(`${replica.id} answered ${res.statusCode}: ${text.slice(0, 200)}`));
          else resolve(text);
        });
      });
      req.end(body);
    });
  }
}

/** A cluster's kube-apiserver or ks-apiserver through another replica's gateway. */
export class PeerUpstream implements Upstream {
  readonly replica: Replica;
  readonly target: Target;
  readonly pool: Agent;
  /** the replica settles whom the request acts as, as this one would: it gets the client's impersonation */
  readonly reviewer = undefined;
  #context: SecureContext;
  #signature: PeerSignature;

  constructor(replica: Replica, target: Target, context: SecureContext, signature: PeerSignature) {
    this.replica = replica;
    this.target = target;
    this.#context = context;
    this.#signature = signature;
    this.pool = new ChannelAgent(this, {
      keepAlive: true,
      maxSockets: 1024,
      maxFreeSockets: 64,
      timeout: IDLE_SOCKET_TIMEOUT_MS,
    });
  }

  get key(): unknown {
    return this.replica.id;
  }
  get via(): string {
    return `replica ${this.replica.id}`;
  }
  get through(): string {
    return this.via;
  }

  /**
   * The client's headers, less what says who it is (a client's own impersonation stays, for that
   * replica to judge as this one would), plus the cluster, the target and the identity this replica
   * verified, signed together with the request's method and path; and the request's Audit-ID,
   * which that replica sends on to the member (not signed: see PEER_HEADERS.auditId).
   */
  headers(req: IncomingMessage, route: Route): OutgoingHttpHeaders {
    const keepAuth = route.target === 'kubesphere';
    const out = forwardedHeaders(req, (k) => !keepAuth && (k === 'authorization' || k.startsWith('x-remote-')));
    out.host = this.replica.address;
    out[PEER_HEADERS.cluster] = route.cluster;
    out[PEER_HEADERS.target] = route.target;
    const identity = route.identity ? encodeIdentity(route.identity) : '';
    if (identity) out[PEER_HEADERS.identity] = identity;
    if (route.auditId) out[PEER_HEADERS.auditId] = route.auditId;
    out[PEER_HEADERS.signature] = this.#signature.sign({
      method: req.method ?? '',
      path: route.path,
      cluster: route.cluster,
      target: route.target,
      identity,
    });
    return out;
  }

  connect(): Promise<Duplex> {
    const m = /^\[?(.*?)\]?:(\d+)$/.exec(this.replica.address)!;
    const host = m[1]!;
    return new Promise((resolve, reject) => {
      const socket: TLSSocket = tlsConnect({
        host,
        port: Number(m[2]),
        servername: isIP(host) ? undefined : host,
        secureContext: this.#context,
        ALPNProtocols: ['http/1.1'],
        timeout: CONNECT_TIMEOUT_MS,
      });
      socket.once('timeout', () =>
        socket.destroy(
          new Error(
            `no TLS connection to replica ${this.replica.id} at ${this.replica.address} within ` +
              `${CONNECT_TIMEOUT_MS} ms`,
          ),
        ),
      );
      socket.once('secureConnect', () => {
        socket.setTimeout(0);
        socket.setNoDelay(true);
        resolve(socket);
      });
      socket.once('error', reject);
    });
  }
}
