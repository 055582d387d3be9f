/**
 * Replicas reaching each other: a replica without a session for a cluster asks the others which
 * one holds one, and forwards the request there (one hop, mutual TLS from tower's CA). Peers
 * are found through Replicas; nothing keeps a shared map of clusters.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { request as httpRequest, type Agent, type IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import type { Logger } from '../observe/log.ts';
import type { Identity } from './identity.ts';
import type { Replica, Replicas } from './replicas.ts';
import { ChannelAgent, type Upstream } from './upstream.ts';

export const PEER_URI_PREFIX = 'urn:tower:peer:';
/** set by the forwarding replica only; a client's own are dropped everywhere */
export const PEER_HEADERS = {
  cluster: 'x-tower-peer-cluster',
  target: 'x-tower-peer-target',
  /** base64 of the JSON Identity the forwarding replica verified */
  identity: 'x-tower-peer-identity',
  /** "<ms>.<HMAC>" over what decides the request (PeerSignature), made with a key only replicas hold */
  signature: 'x-tower-peer-signature',
} as const;
export const PEER_API = '/peer/v1/';
const LOOKUP_TIMEOUT_MS = 2_000;
const FOUND_TTL_MS = 1_000;
const NUDGE_DELAY_MS = 200;
const MAX_ANSWER_BYTES = 1024 * 1024;
const CONNECT_TIMEOUT_MS = 5_000;
const IDLE_SOCKET_TIMEOUT_MS = 60_000;

export type Target = 'kubernetes' | 'kubesphere';

/** What a replica answers to GET /peer/v1/sessions: its id, whether it drains, sessions per cluster asked for. */
export interface PeerSessions {
  server: string;
  draining: boolean;
  sessions: Record<string, number>;
}

/** The replica id a peer certificate names, from Node's `subjectaltname`; undefined for any other certificate. */
export function peerOf(subjectAltName: string | undefined): string | undefined {
  for (const part of (subjectAltName ?? '').split(', ')) {
    if (part.startsWith('URI:' + PEER_URI_PREFIX)) return part.slice(4 + PEER_URI_PREFIX.length);
  }
  return undefined;
}

export function encodeIdentity(who: Identity): string {
  return Buffer.from(JSON.stringify(who)).toString('base64');
}

/** The identity a peer forwarded, or undefined when the header is not one. */
export function decodeIdentity(header: string | undefined): Identity | undefined {
  if (!header) return undefined;
  try {
    const v = JSON.parse(Buffer.from(header, 'base64').toString('utf8')) as Partial<Identity>;
    if (
      typeof v.user !== 'string' ||
      !v.user ||
      !Array.isArray(v.groups) ||
      v.groups.some((g) => typeof g !== 'string')
    )
      return undefined;
    if ([v.user, ...v.groups].some((s) => /[\x00-\x1f\x7f]/.test(s))) return undefined;
    return { user: v.user, groups: v.groups as string[] };
  } catch {
    return undefined;
  }
}

/** how far a signature's time may be from the receiving replica's clock */
const SIGNATURE_SKEW_MS = 5 * 60_000;
const SIGNATURE_VERSION = 'tower-peer-request-v1';

/** What a forwarded request's signature covers: everything that decides whom it acts as, where. */
export interface SignedRequest {
  method: string;
  path: string;
  cluster: string;
  target: string;
  /** the identity header as sent ('' when there is none) */
  identity: string;
}

/**
 * Binds a forwarded request's cluster, target and identity to that request, not to the connection
 * it rides on: an HMAC-SHA256 with a key derived from tower's CA key, which only replicas hold
 * (each loads the CA to issue certificates). A request that got onto a replica-to-replica
 * connection any other way carries no valid signature, whatever its headers say.
 */
export class PeerSignature {
  #key: Buffer;
  constructor(key: Buffer) {
    this.#key = key;
  }

  sign(r: SignedRequest, now = Date.now()): string {
    return `${now}.${this.#mac(r, now)}`;
  }

  /** undefined when `header` signs `r`; else what is wrong with it */
  problem(header: string | string[] | undefined, r: SignedRequest, now = Date.now()): string | undefined {
    if (typeof header !== 'string') return 'no signature';
    const m = /^(\d{1,15})\.([A-Za-z0-9_-]{43})$/.exec(header);
    if (!m) return 'a malformed signature';
    const at = Number(m[1]);
    if (Math.abs(now - at) > SIGNATURE_SKEW_MS)
      return `a signature made ${Math.round((now - at) / 1000)}s from now (more than ${SIGNATURE_SKEW_MS / 1000}s apart)`;
    const want = Buffer.from(this.#mac(r, at), 'base64url');
    if (!timingSafeEqual(want, Buffer.from(m[2]!, 'base64url'))) return 'a signature that does not match the request';
    return undefined;
  }

  #mac(r: SignedRequest, at: number): string {
    return createHmac('sha256', this.#key)
      .update([SIGNATURE_VERSION, String(at), r.method, r.path, r.cluster, r.target, r.identity].join('\n'))
      .digest('base64url');
  }
}

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

  /** Tells the others (batched) that this replica's agents of `cluster` came or went: the one that writes conditions looks again. */
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
      u = new PeerUpstream(replica, target, this.#context);
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
  readonly hostPort: string;
  readonly hostHeader: string;
  readonly pool: Agent;
  readonly authorization = undefined;
  readonly keepsClientAuthorization = true;
  #context: SecureContext;

  constructor(replica: Replica, target: Target, context: SecureContext) {
    this.replica = replica;
    this.target = target;
    this.hostPort = replica.address;
    this.hostHeader = replica.address;
    this.#context = context;
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
            `no TLS connection to replica ${this.replica.id} at ${this.replica.address} within ${CONNECT_TIMEOUT_MS} ms`,
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
