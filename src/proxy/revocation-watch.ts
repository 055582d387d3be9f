/**
 * The revocation list as this replica enforces it: read before the gateway serves, then every
 * REVOCATION_POLL_MS, so that `tower revoke` takes effect on every replica within seconds. A list
 * that is stored but unusable (malformed, unreadable) refuses every client certificate until it is
 * fixed: a revocation a typo hid must not let its certificate back in. A list that cannot be reached
 * for a moment (the host's API restarting) keeps the last one read.
 */
import type { Logger } from '../observe/log.ts';
import type { RevocationRecords } from '../mode/mode.ts';
import { describeRevocation, revokedBy, type CertificateFacts, type RevocationList } from '../pki/revocations.ts';

export const REVOCATION_POLL_MS = 2_000;

export class RevocationWatch {
  #records: RevocationRecords;
  #log: Logger;
  #list: RevocationList | undefined;
  /** why no list is enforced (every client certificate is refused meanwhile) */
  #problem: string | undefined = 'the revocation list has not been read yet';
  #text = '';
  #timer: NodeJS.Timeout | undefined;
  #listeners = new Set<() => void>();

  constructor(records: RevocationRecords, log: Logger) {
    this.#records = records;
    this.#log = log;
  }

  /** Reads the list once, then keeps reading it. */
  async start(): Promise<void> {
    await this.#poll();
    this.#schedule();
  }

  /** Why `cert` may not be used, or undefined. */
  refusal(cert: CertificateFacts): string | undefined {
    if (this.#problem) return `tower cannot enforce its revocation list: ${this.#problem}`;
    const r = revokedBy(this.#list!, cert);
    return r ? `this client certificate is revoked (${describeRevocation(r)}, at ${r.revokedAt})` : undefined;
  }

  /** whether the list read last revokes `cert` (false while no usable list is read) */
  revokes(cert: CertificateFacts): boolean {
    return !!this.#list && revokedBy(this.#list, cert) !== undefined;
  }

  /** `fn` runs after every change of what is revoked */
  onChange(fn: () => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  get entries(): number {
    return this.#list?.revocations.length ?? 0;
  }

  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#listeners.clear();
  }

  #schedule(): void {
    this.#timer = setTimeout(() => {
      void this.#poll().finally(() => {
        if (this.#timer) this.#schedule();
      });
    }, REVOCATION_POLL_MS);
    this.#timer.unref();
  }

  async #poll(): Promise<void> {
    let read: RevocationList | string;
    try {
      read = await this.#records.read();
    } catch (err) {
      // unreachable for now: the last list read holds; before any, nothing is served with a certificate
      if (this.#list)
        this.#log.debug(1, 'cannot read the revocation list; the last one read holds', { err: String(err) });
      else this.#set(undefined, `${this.#records.location} cannot be read: ${(err as Error).message}`);
      return;
    }
    if (typeof read === 'string') this.#set(undefined, read);
    else this.#set(read, undefined);
  }

  #set(list: RevocationList | undefined, problem: string | undefined): void {
    const text = problem ?? JSON.stringify(list);
    if (text === this.#text) return;
    this.#text = text;
    this.#list = list;
    this.#problem = problem;
    if (problem)
      this.#log.error('revocation list unusable: every client certificate is refused until it is fixed', {
        problem,
      });
    else this.#log.info('revocation list read', { entries: list!.revocations.length, from: this.#records.location });
    for (const fn of this.#listeners) fn();
  }
}
