/**
 * The error catalog: every failure tower reports to a person or that a caller handles is one of these.
 *
 * - A caller that handles a failure tests its class (`err instanceof NotFoundError`) or its `code`,
 *   never its message text.
 * - A message names the thing and the fix: `cluster "alpha" not found in ./tower-data (see: tower clusters)`.
 * - Requests the gateway refuses are not errors: they are `Refusal`s, built by the named constructors in
 *   `proxy/gateway/refusals.ts`, and answered as a Kubernetes Status in one place.
 * - Validators return a problem text (`clusterNameProblem(name)`) that the caller wraps in the error or
 *   refusal its context needs.
 */

/** Every code tower gives its errors, with what it means. */
export const CODES = {
  ECONFIG: 'a flag, environment variable or config file value is invalid',
  EINVALIDNAME: 'a cluster name or server id the stores refuse',
  ENOTFOUND: 'the cluster does not exist',
  EEXIST: 'the cluster exists already',
  ECONFLICT: 'the record changed since it was read',
  EUNUSABLE: 'the record exists but cannot be used as asked (no token, no address)',
  EDATADIR: 'the data directory cannot be used',
  EKEYMATERIAL: 'a key or certificate file in the data directory is unreadable or does not match',
  EBUSY: 'another process holds what this one needs (a file claim)',
  ELOCKED: 'another proxy serves the same data directory',
  EKUBE: 'the Kubernetes API refused or failed a call',
  ECA: 'the CA certificate or key given cannot be used',
  EPUBLICCA: 'the CA given is a public one, which would let its other certificates in',
  ECDSA: 'a key is not the ECDSA kind asked for',
  ENOTPROXY: 'what answered is not a tower proxy',
  EPROTOCOL: 'a peer broke the tunnel protocol',
  ESSH: 'the SSH handshake failed',
  EHOSTKEY: "the proxy's host key is not the one pinned",
  EUNVERIFIED: 'nothing verifies the proxy',
  EPOLICY: 'the member policy cannot be enforced',
  EREJECTED: "the proxy refused the agent's config",
  EUNAUTHORIZED: "the proxy refused the agent's name or token",
  EHELD: 'the replica reached is one the agent holds already',
  EGAVEUP: 'the agent stopped retrying',
  EADDRINUSE: 'a port to listen on is taken',
  EACCES: 'a port to listen on is not allowed to this process',
  EHTTP: 'an HTTP exchange failed or answered an unexpected status',
  EDIAL: 'the proxy could not be reached',
  ECLOSED: 'the peer closed the connection',
  ETIMEDOUT: 'the peer did not answer in time',
} as const;

export type ErrorCode = keyof typeof CODES;

/** An error meant for people: a code from CODES and a message that names the thing and the fix. */
export class TowerError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'TowerError';
    this.code = code;
  }
}

/** Bad configuration: a flag, environment variable or config file value. */
export class ConfigError extends TowerError {
  constructor(message: string) {
    super('ECONFIG', message);
    this.name = 'ConfigError';
  }
}

/** A cluster name, token or record that the store refuses. */
export class StoreError extends TowerError {
  constructor(code: ErrorCode, message: string) {
    super(code, message);
    this.name = 'StoreError';
  }
}

/** The cluster asked for does not exist. */
export class NotFoundError extends StoreError {
  constructor(message: string) {
    super('ENOTFOUND', message);
    this.name = 'NotFoundError';
  }
}

/** Optimistic concurrency lost: the record changed since it was read. */
export class ConflictError extends StoreError {
  constructor(message: string) {
    super('ECONFLICT', message);
    this.name = 'ConflictError';
  }
}

/** A peer did not answer within the time it was given. */
export class TimeoutError extends TowerError {
  constructor(message: string) {
    super('ETIMEDOUT', message);
    this.name = 'TimeoutError';
  }
}

/** A peer broke the tunnel protocol (a control message, a config payload). */
export class ProtocolError extends TowerError {
  constructor(message: string) {
    super('EPROTOCOL', message);
    this.name = 'ProtocolError';
  }
}

/** The proxy refused this agent's `config`; the text is the proxy's own words. */
export class ConfigRejectedError extends TowerError {
  /** the proxy named the agent's name or token as the reason (retrying cannot help until they change) */
  readonly unauthorized: boolean;
  constructor(message: string, unauthorized: boolean) {
    super(unauthorized ? 'EUNAUTHORIZED' : 'EREJECTED', message);
    this.name = 'ConfigRejectedError';
    this.unauthorized = unauthorized;
  }
}

/** The proxy's host key is not the one pinned. */
export class HostKeyMismatchError extends TowerError {
  constructor(message: string) {
    super('EHOSTKEY', message);
    this.name = 'HostKeyMismatchError';
  }
}

/** The first line of any thrown value, for logs and one-line errors. */
export function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0];
}
