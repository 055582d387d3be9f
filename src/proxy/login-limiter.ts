/**
 * Failed agent logins slow down the next verdicts for the same (address, cluster name), and more
 * gently for the address as a whole, up to a cap: a stranger guessing tokens gets a few answers a
 * second at most, while a correct agent behind the same address is still admitted, at worst after
 * the cap. Nothing here ever refuses an attempt.
 */
export const MAX_LOGIN_DELAY_MS = 5_000;
/** failures without any delay: an agent with a stale token retrying, a typo */
const FREE_FAILURES_PER_NAME = 3;
const FREE_FAILURES_PER_ADDRESS = 20;
const FIRST_DELAY_MS = 250;
/** a record is forgotten this long after its last failure */
const FORGET_AFTER_MS = 10 * 60_000;
const MAX_RECORDS = 10_000;

interface Record {
  failures: number;
  last: number;
}

export class LoginLimiter {
  #byKey = new Map<string, Record>();

  /** How long to wait before answering an attempt from `address` for cluster `name`. */
  delayMs(address: string, name: string): number {
    const now = Date.now();
    const perName = this.#failures(`${address}\0${name}`, now);
    const perAddress = this.#failures(address, now);
    return Math.min(
      MAX_LOGIN_DELAY_MS,
      Math.max(step(perName, FREE_FAILURES_PER_NAME), step(perAddress, FREE_FAILURES_PER_ADDRESS)),
    );
  }

  failed(address: string, name: string): void {
    const now = Date.now();
    this.#bump(`${address}\0${name}`, now);
    this.#bump(address, now);
  }

  /** A correct login: its (address, name) starts afresh; the address keeps its record. */
  succeeded(address: string, name: string): void {
    this.#byKey.delete(`${address}\0${name}`);
  }

  #failures(key: string, now: number): number {
    const r = this.#byKey.get(key);
    if (!r) return 0;
    if (now - r.last > FORGET_AFTER_MS) {
      this.#byKey.delete(key);
      return 0;
    }
    return r.failures;
  }

  #bump(key: string, now: number): void {
    const failures = this.#failures(key, now) + 1;
    // re-inserted, so that the Map's order is least recently failed first
    this.#byKey.delete(key);
    this.#byKey.set(key, { failures, last: now });
    while (this.#byKey.size > MAX_RECORDS) this.#byKey.delete(this.#byKey.keys().next().value!);
  }
}

function step(failures: number, free: number): number {
  if (failures < free) return 0;
  return Math.min(MAX_LOGIN_DELAY_MS, FIRST_DELAY_MS * 2 ** Math.min(failures - free, 16));
}
