/**
 * Revoked client certificates: a list that `tower revoke` appends to and every proxy replica
 * reads (revocations.yaml in the data dir, or ConfigMap tower-revocations). An entry revokes one
 * certificate by serial, or every certificate of a user, or every certificate, issued before a time;
 * a certificate issued later (a new `tower kubeconfig`) is good again. Pure: reading, checking, adding.
 */
import type { X509Certificate } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import { normalizeSerial, serialProblem } from '../config/names.ts';
import { ISSUE_BACKDATE_MS } from './ca.ts';

export interface Revocation {
  /** one certificate, whatever its user and time */
  serial?: string;
  /** every certificate of this user (its CN) issued before `issuedBefore` */
  user?: string;
  /** with `user`, or alone: every certificate issued before this time (ISO 8601) */
  issuedBefore?: string;
  /** when it was revoked (ISO 8601), for people reading the list */
  revokedAt: string;
}

export interface RevocationList {
  revocations: Revocation[];
}

/** What a check needs of a client certificate. */
export interface CertificateFacts {
  /** upper-case hex, no leading zeros */
  serial: string;
  /** the CN */
  user: string;
  /** when tower issued it: its notBefore plus the back-dating every leaf gets */
  issuedAt: number;
}

export const EMPTY_REVOCATIONS: RevocationList = { revocations: [] };
/** more entries than this is a list nobody keeps by hand: refused, as a malformed one */
const MAX_ENTRIES = 10_000;
const KEYS = new Set(['serial', 'user', 'issuedBefore', 'revokedAt']);
const UNSAFE = /[\x00-\x1f\x7f]/;

export function certificateFacts(cert: PeerCertificate): CertificateFacts {
  const cn = (cert.subject as unknown as Record<string, string | string[] | undefined> | undefined)?.CN;
  return {
    serial: normalizeSerial(cert.serialNumber ?? ''),
    user: Array.isArray(cn) ? (cn[0] ?? '') : (cn ?? ''),
    issuedAt: Date.parse(cert.valid_from) + ISSUE_BACKDATE_MS,
  };
}

/** The same facts of a parsed certificate (one tower wrote into a kubeconfig). */
export function x509Facts(cert: X509Certificate): CertificateFacts {
  const cn = /^CN=(.*)$/m.exec(cert.subject)?.[1] ?? '';
  return {
    serial: normalizeSerial(cert.serialNumber),
    user: cn,
    issuedAt: Date.parse(cert.validFrom) + ISSUE_BACKDATE_MS,
  };
}

/** The entry that revokes `cert`, or undefined. */
export function revokedBy(list: RevocationList, cert: CertificateFacts): Revocation | undefined {
  for (const r of list.revocations) {
    if (r.serial !== undefined) {
      if (r.serial === cert.serial) return r;
    } else if (r.user === undefined || r.user === cert.user) {
      if (cert.issuedAt < Date.parse(r.issuedBefore!)) return r;
    }
  }
  return undefined;
}

/** What an entry revokes, for messages and `tower revoke --list`. */
export function describeRevocation(r: Revocation): string {
  if (r.serial !== undefined) return `certificate ${r.serial}`;
  const when = `issued before ${r.issuedBefore}`;
  return r.user !== undefined ? `certificates of user "${r.user}" ${when}` : `every certificate ${when}`;
}

/** The list in a stored document, or why it is not one (a typo must not silently revoke nothing). */
export function parseRevocations(doc: unknown): RevocationList | string {
  if (doc === undefined || doc === null) return { revocations: [] };
  if (typeof doc !== 'object' || Array.isArray(doc)) return 'is not a mapping with a "revocations" list';
  const o = doc as Record<string, unknown>;
  const extra = Object.keys(o).filter((k) => k !== 'revocations');
  if (extra.length) return `has an unknown key "${extra[0]}" (only "revocations")`;
  const items = o.revocations ?? [];
  if (!Array.isArray(items)) return '"revocations" is not a list';
  if (items.length > MAX_ENTRIES) return `holds ${items.length} entries, more than ${MAX_ENTRIES}`;
  const revocations: Revocation[] = [];
  for (const [i, item] of items.entries()) {
    const r = parseEntry(item);
    if (typeof r === 'string') return `entry ${i + 1} ${r}`;
    revocations.push(r);
  }
  return { revocations };
}

function parseEntry(item: unknown): Revocation | string {
  if (typeof item !== 'object' || item === null || Array.isArray(item)) return 'is not a mapping';
  const e = item as Record<string, unknown>;
  const unknown = Object.keys(e).find((k) => !KEYS.has(k));
  if (unknown) return `has an unknown key "${unknown}" (serial, user, issuedBefore, revokedAt)`;
  const time = (k: string) =>
    typeof e[k] === 'string' && !Number.isNaN(Date.parse(e[k] as string)) ? (e[k] as string) : undefined;
  const revokedAt = time('revokedAt');
  if (!revokedAt) return 'lacks "revokedAt", a time such as 2026-01-31T12:00:00Z';
  if (e.serial !== undefined) {
    if (typeof e.serial !== 'string' || serialProblem(e.serial)) return 'has a "serial" that is not hexadecimal';
    if (e.user !== undefined || e.issuedBefore !== undefined)
      return 'has a "serial" and also "user" or "issuedBefore" (one entry revokes one way)';
    return { serial: normalizeSerial(e.serial), revokedAt };
  }
  const issuedBefore = time('issuedBefore');
  if (!issuedBefore) return 'lacks "serial" or "issuedBefore" (a time such as 2026-01-31T12:00:00Z)';
  if (e.user !== undefined) {
    if (typeof e.user !== 'string' || !e.user || UNSAFE.test(e.user)) return 'has a "user" that is not a user name';
    return { user: e.user, issuedBefore, revokedAt };
  }
  return { issuedBefore, revokedAt };
}

/** The stored document: YAML readers see one entry per revocation. */
export function revocationsDocument(list: RevocationList): Record<string, unknown> {
  return { revocations: list.revocations.map((r) => ({ ...r })) };
}
