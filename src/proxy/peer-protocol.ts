/**
 * What replicas say to each other, on the wire: the certificate that names a replica, the headers a
 * forwarded request carries, and the signature that binds them to that request.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Identity } from './identity.ts';

export const PEER_URI_PREFIX = 'urn:tower:peer:';
/** set by the forwarding replica only; a client's own are dropped everywhere */
export const PEER_HEADERS = {
  cluster: 'x-tower-peer-cluster',
  target: 'x-tower-peer-target',
  /** base64 of the JSON Identity the forwarding replica verified */
  identity: 'x-tower-peer-identity',
  /** "<ms>.<HMAC>" over what decides the request (PeerSignature), made with a key only replicas hold */
  signature: 'x-tower-peer-signature',
  /**
   * the Audit-ID the forwarding replica chose, which the member and both access logs then show. Not
   * signed: it decides nothing of whom or where, and a request that carries it was built by a replica
   * (its signature says so); a client's X-Tower-* never leave the first replica.
   */
  auditId: 'x-tower-peer-audit-id',
} as const;
export const PEER_API = '/peer/v1/';

/** What a replica answers to GET /peer/v1/sessions: its id, whether it drains, sessions per cluster asked for. */
export interface PeerSessions {
  server: string;
  draining: boolean;
  sessions: Record<string, number>;
}

const PEER_SAN = /^URI:urn:tower:peer:([a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?)$/;

/** The replica id a peer certificate names, from Node's `subjectaltname`; undefined for any other certificate. */
export function peerOf(subjectAltName: string | undefined): string | undefined {
  for (const part of (subjectAltName ?? '').split(', ')) {
    // the whole part, so that a quoted name holding ", URI:urn:tower:peer:…" is not read as one
    const m = PEER_SAN.exec(part);
    if (m) return m[1];
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
      return (
        `a signature made ${Math.round((now - at) / 1000)}s from now (more than ${SIGNATURE_SKEW_MS / 1000}s ` +
        `apart)`
      );
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
