/**
 * Who a gateway request acts as in the member. By default the verified client certificate:
 * CN → user, each O → group, sent as Kubernetes impersonation, as kube-apiserver itself reads
 * certificates. A client's own impersonation (`kubectl --as`) goes through only when the member
 * says that identity may impersonate (a SubjectAccessReview through the tunnel, cached briefly).
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import { request as httpRequest } from 'node:http';
import type { PeerCertificate } from 'node:tls';
import type { Agent } from 'node:http';

/** how the gateway acts in the member: as the client certificate (default) or, as the Go tower, as the agent */
export type GatewayIdentity = 'certificate' | 'agent';

export interface Identity {
  user: string;
  groups: string[];
}

/** What a client asked to act as (Impersonate-* headers), already split into values. */
export interface ImpersonationRequest {
  user: string;
  groups: string[];
  uid?: string;
  extra: [key: string, value: string][];
}

const SAR_PATH = '/apis/authorization.k8s.io/v1/subjectaccessreviews';
const SAR_TIMEOUT_MS = 10_000;
const SAR_MAX_ANSWER_BYTES = 64 * 1024;
export const IMPERSONATION_CACHE_MS = 10_000;
const IMPERSONATION_CACHE_ENTRIES = 10_000;
const MAX_IMPERSONATED_VALUES = 64;
/** what Node would refuse in a header value, besides what Kubernetes names must not hold */
const UNSAFE = /[\x00-\x1f\x7f]/;
const SERVICE_ACCOUNT = /^system:serviceaccount:([^:]+):([^:]+)$/;

/** the request headers that say who the caller is: never taken from a client */
export function isIdentityHeader(name: string): boolean {
  return name === 'authorization' || name.startsWith('impersonate-') || name.startsWith('x-remote-');
}

/** The certificate's identity, or why it cannot be forwarded. */
export function certificateIdentity(cert: PeerCertificate): Identity | string {
  const subject = (cert.subject ?? {}) as unknown as Record<string, string | string[] | undefined>;
  const list = (v: string | string[] | undefined) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
  const cns = list(subject.CN);
  const user = cns[0] ?? '';
  if (cns.length !== 1 || !user) return 'the client certificate must have exactly one common name (CN), the user name';
  const groups = list(subject.O);
  for (const v of [user, ...groups]) {
    if (UNSAFE.test(v)) return "the client certificate's subject holds control characters";
    // HTTP trims a header value: " jane" would act as jane, yet escape tower revoke --user jane
    if (v !== v.trim() || !v) return "the client certificate's subject holds a name with spaces around it, or empty";
  }
  return { user, groups };
}

/** The Impersonate-* headers of a request; a string when they are malformed. */
export function impersonationRequest(req: {
  headers: IncomingHttpHeaders;
  headersDistinct: Record<string, string[]>;
}): ImpersonationRequest | undefined | string {
  let names: string[] | undefined;
  for (const k in req.headers) if (k.startsWith('impersonate-')) (names ??= []).push(k);
  if (!names) return undefined;
  // built on each read: only for the requests that impersonate
  const distinct = req.headersDistinct;
  const users = distinct['impersonate-user'] ?? [];
  if (users.length !== 1 || !users[0]) return 'impersonation needs exactly one Impersonate-User (kubectl --as)';
  const groups = distinct['impersonate-group'] ?? [];
  const uids = distinct['impersonate-uid'] ?? [];
  if (uids.length > 1) return 'at most one Impersonate-Uid';
  const extra: [string, string][] = [];
  for (const k of names) {
    if (k.startsWith('impersonate-extra-'))
      for (const v of distinct[k] ?? []) extra.push([decodeExtraKey(k.slice('impersonate-extra-'.length)), v]);
    else if (!['impersonate-user', 'impersonate-group', 'impersonate-uid'].includes(k))
      return `unknown impersonation header ${k}`;
  }
  if (groups.length + extra.length > MAX_IMPERSONATED_VALUES)
    return `at most ${MAX_IMPERSONATED_VALUES} impersonated groups and extras`;
  return { user: users[0], groups, uid: uids[0], extra };
}

/**
 * The header-name form of an extra's key that kube-apiserver reads back as that very key: it lower-
 * cases the name, then percent-decodes it, so every character but lower-case unreserved ones is
 * escaped (an upper-case letter sent as itself would arrive lower-cased: not the key that was checked).
 */
export function extraKeyHeader(k: string): string {
  let out = '';
  for (const byte of Buffer.from(k, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += /[a-z0-9\-._~]/.test(c) ? c : `%${byte.toString(16).padStart(2, '0')}`;
  }
  return out;
}

function decodeExtraKey(k: string): string {
  try {
    return decodeURIComponent(k);
  } catch {
    return k;
  }
}

/** Impersonation headers for `who` (values as UTF-8 bytes, as kube-apiserver reads them). */
export function impersonationHeaders(out: OutgoingHttpHeaders, who: Identity | ImpersonationRequest): void {
  out['impersonate-user'] = wire(who.user);
  if (who.groups.length) out['impersonate-group'] = who.groups.map(wire);
  if ('extra' in who) {
    if (who.uid) out['impersonate-uid'] = wire(who.uid);
    for (const [k, v] of who.extra) {
      const h = `impersonate-extra-${extraKeyHeader(k)}`;
      const prev = out[h];
      out[h] = [...(Array.isArray(prev) ? prev : []), wire(v)];
    }
  }
}

/** Node writes header strings as latin1: hand it the UTF-8 bytes, so that non-ASCII names arrive intact */
function wire(v: string): string {
  return ASCII.test(v) ? v : Buffer.from(v, 'utf8').toString('latin1');
}
const ASCII = /^[\x20-\x7e]*$/;

/** A member's kube-apiserver as the agent's own credentials reach it, for a request of the gateway's own. */
export interface Reviewer {
  readonly pool: Agent;
  /** Host and the agent's Authorization */
  ownHeaders(): OutgoingHttpHeaders;
}

interface Verdict {
  allowed: boolean;
  expires: number;
}

/**
 * Asks the member whether `who` may impersonate what a client requested: one SubjectAccessReview
 * per user, group, uid and extra, as kube-apiserver's own impersonation filter checks them.
 */
export class ImpersonationCheck {
  #cache = new Map<string, Verdict>();

  /** undefined when allowed, else the reason for a 403; rejects when the member could not be asked */
  async denied(
    member: Reviewer,
    cluster: string,
    who: Identity,
    wanted: ImpersonationRequest,
  ): Promise<string | undefined> {
    const sa = SERVICE_ACCOUNT.exec(wanted.user);
    const checks: { what: string; attrs: Record<string, string> }[] = [
      sa
        ? {
            what: `service account "${wanted.user}"`,
            attrs: { resource: 'serviceaccounts', namespace: sa[1]!, name: sa[2]! },
          }
        : { what: `user "${wanted.user}"`, attrs: { resource: 'users', name: wanted.user } },
      ...wanted.groups.map((g) => ({ what: `group "${g}"`, attrs: { resource: 'groups', name: g } })),
      ...(wanted.uid
        ? [
            {
              what: `uid "${wanted.uid}"`,
              attrs: { group: 'authentication.k8s.io', resource: 'uids', name: wanted.uid },
            },
          ]
        : []),
      ...wanted.extra.map(([k, v]) => ({
        what: `extra "${k}=${v}"`,
        attrs: { group: 'authentication.k8s.io', resource: 'userextras', subresource: k, name: v },
      })),
    ];
    for (const c of checks) {
      if (!(await this.#allowed(member, cluster, who, c.attrs))) {
        return (
          `user "${who.user}" may not impersonate ${c.what} in cluster "${cluster}" (the member's RBAC must ` +
          `grant the verb "impersonate" on ${c.attrs.resource})`
        );
      }
    }
    return undefined;
  }

  async #allowed(member: Reviewer, cluster: string, who: Identity, attrs: Record<string, string>): Promise<boolean> {
    const key = JSON.stringify([cluster, who.user, who.groups, attrs]);
    const now = Date.now();
    const hit = this.#cache.get(key);
    if (hit && hit.expires > now) return hit.allowed;
    const allowed = await subjectAccessReview(member, who, attrs);
    this.#cache.delete(key);
    this.#cache.set(key, { allowed, expires: now + IMPERSONATION_CACHE_MS });
    // oldest first: a Map iterates in insertion order
    while (this.#cache.size > IMPERSONATION_CACHE_ENTRIES) this.#cache.delete(this.#cache.keys().next().value!);
    return allowed;
  }
}

/** POST a SubjectAccessReview to the member through `member` (with the agent's credentials); true when allowed. */
function subjectAccessReview(member: Reviewer, who: Identity, attrs: Record<string, string>): Promise<boolean> {
  const body = JSON.stringify({
    apiVersion: 'authorization.k8s.io/v1',
    kind: 'SubjectAccessReview',
    // kube-apiserver adds system:authenticated to every authenticated user
    spec: {
      user: who.user,
      groups: [...new Set([...who.groups, 'system:authenticated'])],
      resourceAttributes: { verb: 'impersonate', group: '', ...attrs },
    },
  });
  const headers: OutgoingHttpHeaders = {
    ...member.ownHeaders(),
    'content-type': 'application/json',
    accept: 'application/json',
    'content-length': Buffer.byteLength(body),
  };
  return new Promise((resolve, reject) => {
    const req = httpRequest({ agent: member.pool, method: 'POST', path: SAR_PATH, headers });
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${SAR_TIMEOUT_MS} ms`)), SAR_TIMEOUT_MS);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (d: Buffer) => {
        size += d.length;
        if (size > SAR_MAX_ANSWER_BYTES) {
          req.destroy(new Error('answer too large'));
          return;
        }
        chunks.push(d);
      });
      res.on('end', () => {
        clearTimeout(timer);
        if (res.statusCode !== 201 && res.statusCode !== 200) {
          reject(
            new Error(
              `the member answered ${res.statusCode} to a SubjectAccessReview (the agent's credentials must allow ` +
                `creating subjectaccessreviews)`,
            ),
          );
          return;
        }
        try {
          const doc = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { status?: { allowed?: unknown } };
          resolve(doc.status?.allowed === true);
        } catch {
          reject(new Error('the member answered a SubjectAccessReview with malformed JSON'));
        }
      });
      res.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(body);
  });
}
