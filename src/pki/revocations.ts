/**
 * Revoked client certificates: a list that `tower revoke` appends to and every proxy replica
 * reads (revocations.yaml in the data dir, or ConfigMap tower-revocations). An entry revokes one
 * certificate by serial, or every certificate of a user, or every certificate, issued before a time;
 * a certificate issued later (a new `tower kubeconfig`) is good again. Pure: reading, checking, adding.
 */
import type { X509Certificate } from 'node:crypto';
import { parse as parseYaml } from 'yaml';
import type { PeerCertificate } from 'node:tls';
import { normalizeSerial, serialProblem } from '../config/names.ts';
import { issuedAtOf } from './ca.ts';

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
  /**
   * when it was issued (ms): the time tower wrote into it, or for a certificate another issuer made
   * with the CA, its notBefore (which errs towards revoking it)
   */
  issuedAt: number;
  /** when it, or the CA, expires (ms): checked on every request, not only at the handshake */
  notAfter: number;
}

/** more entries than this is a list nobody keeps by hand: refused, as a malformed one */
const MAX_ENTRIES = 10_000;
const KEYS = new Set(['serial', 'user', 'issuedBefore', 'revokedAt']);
const UNSAFE = /[\x00-\x1f\x7f]/;

export function certificateFacts(cert: PeerCertificate, caNotAfter = Infinity): CertificateFacts {
  const cn = (cert.subject as unknown as Record<string, string | string[] | undefined> | undefined)?.CN;
  return {
    serial: normalizeSerial(cert.serialNumber ?? ''),
    user: Array.isArray(cn) ? (cn[0] ?? '') : (cn ?? ''),
    issuedAt: issuedAtOf(cert.subjectaltname) ?? Date.parse(cert.valid_from),
    notAfter: Math.min(Date.parse(cert.valid_to), caNotAfter),
  };
}

/** The same facts of a parsed certificate (one tower wrote into a kubeconfig). */
export function x509Facts(cert: X509Certificate): CertificateFacts {
  const cn = /^CN=(.*)$/m.exec(cert.subject)?.[1] ?? '';
  return {
    serial: normalizeSerial(cert.serialNumber),
    user: cn,
    issuedAt: issuedAtOf(cert.subjectAltName) ?? Date.parse(cert.validFrom),
    notAfter: Date.parse(cert.validTo),
  };
}

/** A list made ready for checking every request: by serial and by user, each time parsed once. */
export class RevocationIndex {
  readonly size: number;
  #serials = new Map<string, Revocation>();
  /** per user, and for everyone (key undefined): the entry that revokes the latest issues */
  #before = new Map<string | undefined, { until: number; r: Revocation }>();

  constructor(list: RevocationList) {
    this.size = list.revocations.length;
    for (const r of list.revocations) {
      if (r.serial !== undefined) {
        this.#serials.set(r.serial, r);
        continue;
      }
      const until = Date.parse(r.issuedBefore!);
      const prev = this.#before.get(r.user);
      if (!prev || until > prev.until) this.#before.set(r.user, { until, r });
    }
  }

  /** The entry that revokes `cert`, or undefined. */
  revokes(cert: CertificateFacts): Revocation | undefined {
    const bySerial = this.#serials.get(cert.serial);
    if (bySerial) return bySerial;
    for (const key of [cert.user, undefined]) {
      const e = this.#before.get(key);
      if (e && cert.issuedAt < e.until) return e.r;
    }
    return undefined;
  }
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

/** The list in stored YAML text, or why it is not one (messages start with `location`). */
export function parseRevocationsText(text: string, location: string): RevocationList | string {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    return `${location} is not YAML (${(err as Error).message.split('\n')[0]})`;
  }
  const list = parseRevocations(doc);
  return typeof list === 'string' ? `${location} ${list}` : list;
}

/** The stored document: YAML readers see one entry per revocation. */
export function revocationsDocument(list: RevocationList): Record<string, unknown> {
  return { revocations: list.revocations.map((r) => ({ ...r })) };
}
