/**
 * How a request is read: the framing of its body, and its Kubernetes verb. Pure functions of the
 * request head.
 */
import { truncate } from '../../observe/log.ts';

/** A request body as tower forwards it, by the one framing the client's head allows. */
export type Body = { kind: 'none' } | { kind: 'length'; bytes: number } | { kind: 'chunked' };

/**
 * How a client's request frames its body, or why tower will not read it one way (the member or a
 * server between might read it another): Transfer-Encoding only as the one coding "chunked" (as Go's
 * net/http, which kube-apiserver runs on, accepts), never beside Content-Length.
 */
export function requestBody(rawHeaders: readonly string[]): Body | string {
  let te: string | undefined;
  let cl: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') {
      if (te !== undefined) return 'a request with more than one Transfer-Encoding header';
      te = rawHeaders[i + 1]!;
    } else if (name.length === 14 && name.toLowerCase() === 'content-length') {
      if (cl !== undefined && cl !== rawHeaders[i + 1]) return 'a request with differing Content-Length headers';
      cl = rawHeaders[i + 1]!;
    }
  }
  if (te !== undefined) {
    if (cl !== undefined) return 'a request with both Content-Length and Transfer-Encoding';
    if (te.trim().toLowerCase() !== 'chunked')
      return `a request with Transfer-Encoding ${JSON.stringify(truncate(te))}: only "chunked" is accepted`;
    return { kind: 'chunked' };
  }
  if (cl === undefined) return { kind: 'none' };
  if (!/^\s*\d{1,15}\s*$/.test(cl)) return `a request with Content-Length ${JSON.stringify(truncate(cl))}`;
  const bytes = Number(cl);
  return bytes > 0 ? { kind: 'length', bytes } : { kind: 'none' };
}

/** The Kubernetes verb of a request, as kube-apiserver's RequestInfo names it (for the access log). */
export function kubernetesVerb(method: string, url: string): string {
  const [path = '', query = ''] = url.split('?');
  const parts = path.split('/').filter(Boolean);
  // /api/v1/… and /apis/<group>/<version>/…: what follows names resources; namespaces/<ns>/ scopes them
  let rest = parts[0] === 'api' ? parts.slice(2) : parts[0] === 'apis' ? parts.slice(3) : undefined;
  // no resource named (/version, /api, /apis/<group>/<version>): the method's name, as kube-apiserver has it
  if (rest === undefined || rest.length === 0) return method.toLowerCase();
  if (rest[0] === 'namespaces' && rest.length >= 3) rest = rest.slice(2);
  const named = rest.length >= 2;
  switch (method) {
    case 'GET':
    case 'HEAD':
      if (/(^|&)watch=(true|1)(&|$)/.test(query)) return 'watch';
      return named ? 'get' : 'list';
    case 'POST':
      return 'create';
    case 'PUT':
      return 'update';
    case 'PATCH':
      return 'patch';
    case 'DELETE':
      return named ? 'delete' : 'deletecollection';
    default:
      return method.toLowerCase();
  }
}

/**
 * The resource a request names (`pods`, `pods/exec`) and its namespace, as kube-apiserver's
 * RequestInfo reads them (for the access log); nothing for a path that names no resource.
 */
export function kubernetesResource(url: string): { resource?: string; namespace?: string } {
  const q = url.indexOf('?');
  const parts = (q < 0 ? url : url.slice(0, q)).split('/').filter(Boolean);
  let rest = parts[0] === 'api' ? parts.slice(2) : parts[0] === 'apis' ? parts.slice(3) : [];
  // the deprecated /api/v1/watch/… form
  if (rest[0] === 'watch') rest = rest.slice(1);
  if (rest.length === 0) return {};
  let namespace: string | undefined;
  if (rest[0] === 'namespaces' && rest.length > 1) {
    namespace = rest[1];
    // a namespace's own subresources; anything else after namespaces/<ns>/ is a namespaced resource
    if (rest.length > 2 && rest[2] !== 'status' && rest[2] !== 'finalize') rest = rest.slice(2);
  }
  const resource = rest.length >= 3 ? `${rest[0]}/${rest[2]}` : rest[0];
  return { resource, namespace };
}

/** a request that streams until its client leaves (a watch, `logs -f`): not counted against the in-flight limit */
export function isLongRunning(verb: string, path: string): boolean {
  return verb === 'watch' || /[?&]follow=(true|1)(&|$)/.test(path);
}
