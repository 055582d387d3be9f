/**
 * What a request head asks of the member, read as kube-apiserver reads it (its RequestInfo and
 * impersonation filters), so that a member policy judges exactly what the member would do. Where
 * the member could read a head in more than one way (an escape it decodes otherwise, a query split
 * at `;` by an older Go, two Impersonate-User lines), the head is not judged at all: it is refused.
 */

/** Who the request acts as: the agent's own account, or the user the proxy impersonates. */
export interface Subject {
  /** no Impersonate-User: the request acts as the agent's own account */
  agent: boolean;
  /** the impersonated user ('' for the agent) */
  user: string;
  /** the impersonated groups, with those kube-apiserver adds (system:authenticated, a service account's) */
  groups: string[];
}

export interface RequestInfo {
  subject: Subject;
  /** the Kubernetes verb (get, list, watch, create, update, patch, delete, deletecollection, proxy), or a method */
  verb: string;
  resourceRequest: boolean;
  /** '' for the core group */
  apiGroup: string;
  /** `pods`, or `pods/exec` with its subresource */
  resource: string;
  /** '' when cluster-scoped */
  namespace: string;
  name: string;
  /** the decoded path, as kube-apiserver sees it */
  path: string;
  /** the query, decoded, read-only (requests without one share an empty one): `container`, `command` of an exec */
  query: QueryView;
}

/** the header lines of a head, names in lower case */
export type HeadLines = readonly { name: string; value: string }[];

const API_PREFIXES = new Set(['api', 'apis']);
const SPECIAL_VERBS = new Set(['proxy', 'watch']);
const NAMESPACE_SUBRESOURCES = new Set(['status', 'finalize']);
const VERB_OF_METHOD: Record<string, string> = {
  POST: 'create',
  GET: 'get',
  HEAD: 'get',
  PUT: 'update',
  PATCH: 'patch',
  DELETE: 'delete',
};
/**
 * Subresources that open a stream into a pod: judged as `create` whatever the method, as RBAC has
 * always asked of kubectl (POST) and asks of WebSocket clients (GET) since Kubernetes 1.30
 */
const STREAM_SUBRESOURCES = new Set(['exec', 'attach', 'portforward']);
/** the only false values of a boolean query parameter, as apimachinery reads them (even empty is true) */
const FALSE_VALUES = new Set(['0', 'false']);
const SERVICE_ACCOUNT = /^system:serviceaccount:([^:]+):([^:]+)$/;
const ASCII = /^[\x00-\x7f]*$/;
/** shared by every request without a query: QueryView lets nothing write to it */
const NO_QUERY: QueryView = new URLSearchParams();

/** what a judged request's query offers: reading */
export type QueryView = Pick<URLSearchParams, 'get' | 'getAll' | 'has'>;

/** A boolean query parameter as apimachinery reads it: present, and neither 0 nor false. */
export function queryFlag(query: QueryView, name: string): boolean {
  const v = query.get(name);
  return v !== null && !FALSE_VALUES.has(v.toLowerCase());
}

/** The request as the member reads it, or why it cannot be told for certain. */
export function requestInfo(method: string, target: string, lines: HeadLines): RequestInfo | string {
  const subject = subjectOf(lines);
  if (typeof subject === 'string') return subject;
  if (!target.startsWith('/')) return 'a request target that is not a path';
  const q = target.indexOf('?');
  const rawPath = q < 0 ? target : target.slice(0, q);
  const rawQuery = q < 0 ? '' : target.slice(q + 1);
  const path = decodePath(rawPath);
  if (path === undefined) return 'a path with a malformed %-escape';
  const query = decodeQuery(rawQuery);
  if (typeof query === 'string') return query;
  const info: RequestInfo = {
    subject,
    verb: method.toLowerCase(),
    resourceRequest: false,
    apiGroup: '',
    resource: '',
    namespace: '',
    name: '',
    path,
    query,
  };
  const trimmed = path.replace(/^\/+|\/+$/g, '');
  let parts = trimmed === '' ? [] : trimmed.split('/');
  // what one server reads as a segment and another does not: never judged
  if (parts.some((p) => p === '' || p === '.' || p === '..')) return 'a path with empty, "." or ".." segments';
  if (parts.length < 3 || !API_PREFIXES.has(parts[0]!)) return info;
  const groupless = parts[0] === 'api';
  parts = parts.slice(1);
  if (!groupless) {
    if (parts.length < 3) return info;
    info.apiGroup = parts[0]!;
    parts = parts.slice(1);
  }
  info.resourceRequest = true;
  parts = parts.slice(1); // the version
  if (SPECIAL_VERBS.has(parts[0]!)) {
    if (parts.length < 2) return 'a path that names no resource after its verb';
    info.verb = parts[0]!;
    parts = parts.slice(1);
  } else info.verb = VERB_OF_METHOD[method] ?? '';
  if (parts[0] === 'namespaces') {
    if (parts.length > 1) {
      info.namespace = parts[1]!;
      if (parts.length > 2 && !NAMESPACE_SUBRESOURCES.has(parts[2]!)) parts = parts.slice(2);
    }
  }
  const subresource = parts.length >= 3 && info.verb !== 'proxy' ? parts[2]! : '';
  info.name = parts.length >= 2 ? parts[1]! : '';
  info.resource = (parts[0] ?? '') + (subresource ? `/${subresource}` : '');
  if (info.name === '' && info.verb === 'get') {
    info.verb = queryFlag(query, 'watch') ? 'watch' : 'list';
    // a list narrowed to one name by a field selector is judged by its verb alone, never by that name
  }
  if (info.name === '' && info.verb === 'delete') info.verb = 'deletecollection';
  if (STREAM_SUBRESOURCES.has(subresource)) info.verb = 'create';
  return info;
}

/** Impersonate-User and Impersonate-Group as kube-apiserver's impersonation filter reads them. */
function subjectOf(lines: HeadLines): Subject | string {
  let user: string | undefined;
  const groups: string[] = [];
  for (const { name, value: latin1 } of lines) {
    if (name !== 'impersonate-user' && name !== 'impersonate-group') continue;
    // heads are read byte for byte; kube-apiserver reads these names as UTF-8, as a policy's are written
    // (ASCII, nearly every name, reads the same either way)
    let value = latin1;
    if (!ASCII.test(latin1)) {
      value = Buffer.from(latin1, 'latin1').toString('utf8');
      if (Buffer.from(value, 'utf8').toString('latin1') !== latin1) return `${name} that is not UTF-8`;
    }
    if (name === 'impersonate-user') {
      if (user !== undefined) return 'Impersonate-User twice';
      if (value === '') return 'an empty Impersonate-User';
      user = value;
    } else groups.push(value);
  }
  if (user === undefined) {
    if (groups.length > 0) return 'Impersonate-Group without Impersonate-User';
    return { agent: true, user: '', groups: [] };
  }
  const sa = SERVICE_ACCOUNT.exec(user);
  if (sa && groups.length === 0) groups.push('system:serviceaccounts', `system:serviceaccounts:${sa[1]}`);
  // as kube-apiserver's impersonation filter adds them
  if (user === 'system:anonymous') {
    if (!groups.includes('system:unauthenticated')) groups.push('system:unauthenticated');
  } else if (!groups.includes('system:authenticated') && !groups.includes('system:unauthenticated'))
    groups.push('system:authenticated');
  return { agent: false, user, groups };
}

/** %-escapes decoded as Go's url.PathUnescape does ('+' stays); undefined for a malformed one */
function decodePath(raw: string): string | undefined {
  if (!raw.includes('%')) return raw;
  if (/%(?![0-9a-fA-F]{2})/.test(raw)) return undefined;
  try {
    return decodeURIComponent(raw);
  } catch {
    // an escape that is not UTF-8: Go keeps the bytes, which name nothing a policy could allow
    return raw.replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
  }
}

/**
 * The query as Go's url.ParseQuery reads it: '&'-separated, '+' a space. A ';' separated pairs
 * before Go 1.17 and voids them after, and a malformed escape voids its pair: either could make
 * the member read a parameter the agent did not, so neither is judged.
 */
function decodeQuery(raw: string): QueryView | string {
  if (raw === '') return NO_QUERY;
  if (raw.includes(';')) return 'a query with ";" (members read it differently by Go version)';
  if (/%(?![0-9a-fA-F]{2})/.test(raw)) return 'a query with a malformed %-escape';
  return new URLSearchParams(raw);
}
