/**
 * What a failed call to the host's API said, for logs and errors: pure functions, apart from the client
 * (which every command would otherwise load at start).
 */
import { TowerError } from '../../errors.ts';

/** The HTTP status of a failed API call (client-node's ApiException, or a watch error). */
export function apiStatus(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown };
  if (typeof e?.code === 'number') return e.code;
  if (typeof e?.statusCode === 'number') return e.statusCode;
  return undefined;
}

/** One line for logs and errors: the API's own message when there is one. */
export function apiMessage(err: unknown): string {
  const e = err as { code?: unknown; body?: unknown; message?: string; cause?: { message?: string } };
  const status = apiStatus(err);
  if (status !== undefined) {
    let body = e.body as { message?: string } | string | undefined;
    if (typeof body === 'string') {
      try {
        body = JSON.parse(body) as { message?: string };
      } catch {
        /* not JSON */
      }
    }
    const raw =
      typeof body === 'object' && typeof body?.message === 'string' && body.message
        ? body.message
        : typeof body === 'string' && body.trim()
          ? body.slice(0, 200)
          : (e.message?.split('\n')[0] ?? '');
    // one line, whatever the API put in its message: commands print it as their error
    return `${status}: ${raw.trim().replace(/\s*\n\s*/g, ' ')}`;
  }
  const cause = e?.cause?.message;
  return cause ? `${e.message}: ${cause}` : String(e?.message ?? err);
}

/** undefined for an object that does not exist; an API that does not serve its kind at all is an error */
export async function orUndefined<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch (err) {
    if (apiStatus(err) === 404 && !notServed(err)) return undefined;
    throw err;
  }
}

/**
 * A 404 from the API's router rather than from a resource ("404 page not found", no Status): the API does
 * not serve that kind at all, as with Clusters before their CRD is applied.
 */
export function notServed(err: unknown): boolean {
  if (apiStatus(err) !== 404) return false;
  const body = (err as { body?: unknown }).body;
  const text = typeof body === 'string' ? body : JSON.stringify(body ?? '');
  return /404 page not found/.test(text) || /404 page not found/.test((err as Error).message ?? '');
}

/** what to do when the host's API does not serve Clusters */
export const CRD_MISSING_HINT =
  "apply KubeSphere's Cluster CRD (clusters.cluster.kubesphere.io), which `tower install crd` prints: " +
  'tower install crd --with-namespace --kubeconfig <host> | kubectl --kubeconfig <host> apply -f -';

/** A failed API call as an error for people: what was attempted, where, and why. */
export function apiError(what: string, server: string, err: unknown): TowerError {
  const status = apiStatus(err);
  const hint =
    status === 401
      ? " (the host kubeconfig's credentials are not accepted)"
      : status === 403
        ? ' (grant the RBAC that `tower install proxy` prints)'
        : notServed(err)
          ? ` (the API does not serve it: ${CRD_MISSING_HINT})`
          : status === 404 && /Cluster/.test(what)
            ? ' (is the Cluster CRD installed? `tower install proxy --with-crd | kubectl apply -f -`)'
            : status === undefined
              ? ' (is the host cluster reachable?)'
              : '';
  return new TowerError('EKUBE', `${what} at ${server} failed: ${apiMessage(err)}${hint}`);
}
