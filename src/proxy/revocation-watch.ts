/**
 * The revocation list as this replica enforces it: read before the gateway serves, then every
 * REVOCATION_POLL_MS, so that `tower revoke` takes effect on every replica within seconds. After each
 * read the gateways close the connections whose certificate is revoked, or has expired since its
 * handshake. A list that is stored but unusable (malformed, unreadable, not a file) refuses every
 * client certificate until it is fixed: a revocation a typo hid must not let its certificate back in.
 * A list that cannot be reached for a moment (the host's API restarting) keeps the last one read, for
 * REVOCATION_STALE_MS at most: a replica that cannot learn of revocations stops trusting certificates.
 */
import type { Logger } from '../observe/log.ts';
import type { RevocationRecords } from '../mode/mode.ts';
import { describeRevocation, RevocationIndex, type CertificateFacts } from '../pki/revocations.ts';

export const REVOCATION_POLL_MS = 2_000;
/** a read that takes longer is given up (and counts as not read) */
const READ_TIMEOUT_MS = 10_000;
/** how long the last list read holds while the list cannot be read */
export const REVOCATION_STALE_MS = 30_000;

export class RevocationWatch {
  #records: RevocationRecords;
  #log: Logger;
  #index: RevocationIndex | undefined;
  /** why no list is enforced (every client certificate is refused meanwhile) */
  #problem: string | undefined = 'the revocation list has not been read yet';
  #text = '';
  /** when the list was last read (ms) */
  #readAt = 0;
  #lastError = '';
  #timer: NodeJS.Timeout | undefined;
  #listeners = new Set<() => void>();
  /** run when a list that differs from the last is read */
  #revised = new Set<() => void>();

  #pollMs: number;
  #staleMs: number;

  constructor(
    records: RevocationRecords,
    log: Logger,
    times = { pollMs: REVOCATION_POLL_MS, staleMs: REVOCATION_STALE_MS },
  ) {
    this.#records = records;
    this.#log = log;
    this.#pollMs = times.pollMs;
    this.#staleMs = times.staleMs;
  }

  /** Reads the list once, then keeps reading it. */
  async start(): Promise<void> {
    await this.#poll();
    this.#schedule();
  }

  /** Why a request with `cert` may not go on, or undefined. */
  refusal(cert: CertificateFacts, now = Date.now()): string | undefined {
    if (now > cert.notAfter) return `this client certificate expired at ${new Date(cert.notAfter).toISOString()}`;
    if (this.#problem) return `tower cannot enforce its revocation list: ${this.#problem}`;
    const r = this.#index!.revokes(cert);
    return r ? `this client certificate is revoked (${describeRevocation(r)}, at ${r.revokedAt})` : undefined;
  }

  /** whether the list read last revokes `cert` (false while no usable list is read) */
  revokes(cert: CertificateFacts): boolean {
    return !!this.#index?.revokes(cert);
  }

  /** `fn` runs after every read, so that what was revoked or has expired meanwhile is closed */
  onChange(fn: () => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** `fn` runs when a new list is read (not at every read): what was issued with a revoked certificate is renewed */
  onRevised(fn: () => void): () => void {
    this.#revised.add(fn);
    return () => this.#revised.delete(fn);
  }

  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#listeners.clear();
    this.#revised.clear();
  }

  #schedule(): void {
    this.#timer = setTimeout(() => {
      void this.#poll().finally(() => {
        if (this.#timer) this.#schedule();
      });
    }, this.#pollMs);
    this.#timer.unref();
  }

  async #poll(): Promise<void> {
    try {
      const read = await withTimeout(this.#records.read(), READ_TIMEOUT_MS);
      this.#readAt = Date.now();
      this.#lastError = '';
      if (typeof read === 'string') this.#set(undefined, read);
      else this.#set(new RevocationIndex(read), undefined, JSON.stringify(read));
    } catch (err) {
      const why = (err as Error).message;
      if (why !== this.#lastError)
        this.#log.warn('cannot read the revocation list', { from: this.#records.location, err: why });
      this.#lastError = why;
      // the last list holds for a while; before any, or after that, nothing is served with a certificate
      if (!this.#index || Date.now() - this.#readAt > this.#staleMs)
        this.#set(
          undefined,
          this.#readAt
            ? `${this.#records.location} has not been read for ${Math.round((Date.now() - this.#readAt) / 1000)}s ` +
                `(${why})`
            : `${this.#records.location} cannot be read (${why})`,
          'unread',
        );
    }
    for (const fn of this.#listeners) fn();
  }

  #set(index: RevocationIndex | undefined, problem: string | undefined, text = problem ?? ''): void {
    if (text === this.#text) return;
    this.#text = text;
    const before = this.#index?.size ?? 0;
    this.#index = index;
    this.#problem = problem;
    if (problem) {
      this.#log.error('revocation list unusable: every client certificate is refused until it is fixed', {
        problem,
      });
      return;
    }
    if (index!.size === 0 && before > 0)
      this.#log.error('the revocation list is empty or gone: the certificates it revoked are good again', {
        from: this.#records.location,
        revocationsBefore: before,
      });
    else this.#log.info('revocation list read', { entries: index!.size, from: this.#records.location });
    for (const fn of this.#revised) fn();
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms / 1000}s`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
