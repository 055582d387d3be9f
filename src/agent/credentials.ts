import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { readFileOrExplain } from '../config/files.ts';
import { ConfigError } from '../errors.ts';
import { normalizeHostPort } from '../tunnel/protocol.ts';

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** How the proxy reaches and authenticates to this member's kube-apiserver. */
export interface Credentials {
  /** "host:port" of the kube-apiserver */
  hostPort: string;
  caData?: Buffer;
  certData?: Buffer;
  keyData?: Buffer;
  bearerToken?: Buffer;
  /** a token file that rotates (bound service-account tokens): watched by the agent */
  tokenFile?: string;
  /** where these came from, for logs */
  origin: string;
}

type Doc = Record<string, unknown>;

/** Reads a kubeconfig's current context: inline data or file paths (relative to the kubeconfig). */
export function credentialsFromKubeconfig(path: string): Credentials {
  let doc: Doc;
  try {
    doc = (parseYaml(readFileSync(path, 'utf8')) ?? {}) as Doc;
  } catch (err) {
    const why =
      (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message.split('\n')[0];
    throw new ConfigError(`cannot read --kubeconfig ${path}: ${why}`);
  }
  const bad = (what: string) => new ConfigError(`kubeconfig ${path}: ${what}`);
  const named = (list: unknown, name: unknown, kind: string): Doc => {
    const item = Array.isArray(list) ? list.find((x: Doc) => x?.name === name) : undefined;
    if (!item) throw bad(`${kind} ${JSON.stringify(name)} not found`);
    return (item[kind] ?? {}) as Doc;
  };
  const contexts = doc.contexts as Doc[] | undefined;
  const current =
    doc['current-context'] ?? (Array.isArray(contexts) && contexts.length === 1 ? contexts[0]!.name : undefined);
  if (!current) throw bad('no current-context (set one with: kubectl config use-context NAME)');
  const ctx = named(contexts, current, 'context');
  const cluster = named(doc.clusters, ctx.cluster, 'cluster');
  const user = ctx.user === undefined ? {} : named(doc.users, ctx.user, 'user');
  if (user.exec || user['auth-provider']) {
    throw bad(
      `user ${JSON.stringify(ctx.user)} authenticates with ${user.exec ? 'an exec plugin' : 'an auth provider'}, ` +
        'which the proxy cannot use; give the agent a kubeconfig with a client certificate or a token ' +
        '(e.g. of a ServiceAccount)',
    );
  }
  const base = dirname(path);
  const data = (obj: Doc, dataKey: string, fileKey: string): Buffer | undefined => {
    if (typeof obj[dataKey] === 'string' && obj[dataKey] !== '') return Buffer.from(obj[dataKey] as string, 'base64');
    if (typeof obj[fileKey] === 'string' && obj[fileKey] !== '')
      return readFileOrExplain(resolvePath(base, obj[fileKey] as string), `${fileKey} of kubeconfig ${path}`);
    return undefined;
  };
  const server = cluster.server;
  if (typeof server !== 'string' || !/^https:\/\//.test(server))
    throw bad(`cluster server ${JSON.stringify(server)} must be an https:// URL`);
  const tokenFile =
    typeof user.tokenFile === 'string' && user.tokenFile !== '' ? resolvePath(base, user.tokenFile) : undefined;
  const token =
    typeof user.token === 'string' && user.token !== ''
      ? checkedToken(Buffer.from(user.token), `the token of kubeconfig ${path}`)
      : tokenFile
        ? checkedToken(readFileOrExplain(tokenFile, `tokenFile of kubeconfig ${path}`), tokenFile)
        : undefined;
  const creds: Credentials = {
    hostPort: normalizeHostPort(new URL(server).host, 443),
    caData: data(cluster, 'certificate-authority-data', 'certificate-authority'),
    certData: data(user, 'client-certificate-data', 'client-certificate'),
    keyData: data(user, 'client-key-data', 'client-key'),
    bearerToken: token,
    tokenFile,
    origin: `kubeconfig ${path}`,
  };
  if (!creds.bearerToken && !(creds.certData && creds.keyData)) {
    throw bad(`user ${JSON.stringify(ctx.user)} has neither a token nor a client certificate and key`);
  }
  return creds;
}

/** The pod's service account, as client-go's in-cluster config reads it. */
export function credentialsInCluster(env: NodeJS.ProcessEnv = process.env, dir = SERVICE_ACCOUNT_DIR): Credentials {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) {
    throw new ConfigError(
      'not running in a cluster (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset); ' +
        "give the member cluster's kubeconfig with --kubeconfig",
    );
  }
  const tokenFile = join(dir, 'token');
  return {
    hostPort: normalizeHostPort(host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`, 443),
    caData: readFileOrExplain(join(dir, 'ca.crt'), 'the service account CA'),
    bearerToken: checkedToken(readFileOrExplain(tokenFile, 'the service account token'), tokenFile),
    tokenFile,
    origin: `service account in ${dir}`,
  };
}

/**
 * A bearer token goes into a header this agent writes: printable ASCII only (surrounding whitespace
 * is dropped when used).
 */
function checkedToken(token: Buffer, where: string): Buffer {
  if (!/^[\x21-\x7e]+$/.test(token.toString('latin1').trim())) {
    throw new ConfigError(`${where} is not a bearer token: it must be printable ASCII without spaces`);
  }
  return token;
}

function resolvePath(base: string, p: string): string {
  return isAbsolute(p) ? p : join(base, p);
}
