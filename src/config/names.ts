/**
 * The names tower accepts, checked wherever they arrive (flags, the agent's `config`, the stores, the
 * Leases of replicas): each validator returns why a name is refused, or undefined.
 */
import { StoreError } from '../errors.ts';

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
export const MAX_NAME_LENGTH = 63;
const SERVER_ID = /^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$/;

/** Why `name` is not a valid cluster name (a DNS-1123 label), or undefined when it is. */
export function clusterNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'a cluster name must not be empty';
  if (name.length > MAX_NAME_LENGTH) return `a cluster name has at most ${MAX_NAME_LENGTH} characters`;
  if (!DNS1123_LABEL.test(name)) {
    return (
      'a cluster name must be a DNS-1123 label: lower-case letters, digits and "-", ' +
      'starting and ending with a letter or digit (e.g. "alpha")'
    );
  }
  return undefined;
}

/** `name`, when it is a valid cluster name; else a StoreError EINVALIDNAME that says why. */
export function assertClusterName(name: string): string {
  const problem = clusterNameProblem(name);
  if (problem) throw new StoreError('EINVALIDNAME', `invalid cluster name ${JSON.stringify(name)}: ${problem}`);
  return name;
}

/** Why `id` cannot name a proxy replica (it names a Lease and travels in a header), or undefined. */
export function serverIdProblem(id: string): string | undefined {
  return SERVER_ID.test(id)
    ? undefined
    : 'a server id is 1-63 lower-case letters, digits, "-" and ".", starting and ending with a letter or digit';
}

/**
 * Who can reach a host that tower hands to members (the proxy's address in a join command, or the address
 * it publishes): `loopback` (only this machine, or inside a pod the pod itself), `cluster` (a Service's name,
 * which only pods of that cluster resolve), or `anywhere` (as far as a name can tell).
 */
export function reachOf(host: string): 'loopback' | 'cluster' | 'anywhere' {
  const h = host
    .toLowerCase()
    .replace(/^\[|\]$/g, '')
    .replace(/\.$/, '');
  if (h === 'localhost' || h.endsWith('.localhost') || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h) || h === '0.0.0.0')
    return 'loopback';
  if (/\.svc$/.test(h) || /\.svc\.cluster\.local$/.test(h) || h.endsWith('.cluster.local')) return 'cluster';
  return 'anywhere';
}

/** upper-case hex without separators or leading zeros: how certificate serials are printed and compared */
export function normalizeSerial(s: string): string {
  return s
    .replace(/[:\s]/g, '')
    .toUpperCase()
    .replace(/^0+(?=.)/, '');
}

export function serialProblem(s: string): string | undefined {
  return /^[0-9A-F]{1,40}$/.test(normalizeSerial(s))
    ? undefined
    : 'want the hexadecimal serial number (up to 40 digits)';
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/** The time (ms) an RFC 3339 timestamp with its offset names, or undefined (a day that does not exist included). */
export function rfc3339(text: string): number | undefined {
  const m = RFC3339.exec(text);
  if (!m) return undefined;
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) return undefined;
  // Date.parse rolls 2026-02-30 over into March: the day must be the one written, in the writer's offset
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const day = new Date(Date.UTC(y, mo - 1, d));
  return day.getUTCFullYear() === y && day.getUTCMonth() === mo - 1 && day.getUTCDate() === d ? ms : undefined;
}
