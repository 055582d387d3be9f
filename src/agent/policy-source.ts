/**
 * Where the member policy lives (a file, or a ConfigMap in the member), and the one copy of it the
 * agent judges by, read again every POLLING_MS so that an owner's change holds within seconds, with
 * no restart. It fails closed: a policy that is missing, malformed, or unread for STALE_MS refuses
 * every request, saying why, until it is fixed.
 */
import { readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { readRegularFile } from '../config/files.ts';
import { ConfigError } from '../errors.ts';
import { AUDIT_ID_HEADER } from '../http/audit-id.ts';
import { rawStatus } from '../http/status.ts';
import type { Logger } from '../observe/log.ts';
import { hostOf, splitHostPort } from '../tunnel/protocol.ts';
import { SERVICE_ACCOUNT_DIR, type Credentials } from './credentials.ts';
import { describeRequest, judge, parsePolicy, PolicyError, type MemberPolicy } from './policy.ts';
import { requestInfo, type HeadLines } from './request-info.ts';

export const POLICY_POLLING_MS = 2_000;
/** a policy not read for this long (the member's apiserver unreachable, say) is no longer trusted */
export const POLICY_STALE_MS = 30_000;
const READ_TIMEOUT_MS = 10_000;
const MAX_POLICY_BYTES = 1024 * 1024;
const READS = new Set(['get', 'list', 'watch']);
/** the ConfigMap key that holds the policy */
export const POLICY_KEY = 'policy.yaml';

/** What the policy is read from. */
export interface PolicyOrigin {
  /** for messages: "file /etc/tower/policy.yaml", "configmap tower-system/tower-agent-policy" */
  readonly describe: string;
  /** the ConfigMap that holds the policy: no request through the tunnel may write it */
  readonly configMap?: { namespace: string; name: string };
  /** the policy's text, or a problem that is the origin's for certain (missing, malformed) */
  read(): Promise<{ text: string } | { problem: string; transient?: boolean }>;
}

export function fileOrigin(path: string): PolicyOrigin {
  return {
    describe: `file ${path}`,
    async read() {
      const r = await readRegularFile(path, MAX_POLICY_BYTES);
      if ('text' in r) return r;
      return { problem: 'missing' in r ? 'there is no such file' : `it ${r.problem}` };
    },
  };
}

/** `[NAMESPACE/]NAME`: the namespace defaults to the pod's own. */
export function configMapOrigin(ref: string, credentials: () => Credentials, dir = SERVICE_ACCOUNT_DIR): PolicyOrigin {
  const [given, name] = ref.includes('/') ? ref.split('/', 2) : [undefined, ref];
  let namespace = given;
  if (namespace === undefined) {
    try {
      namespace = readFileSync(join(dir, 'namespace'), 'utf8').trim();
    } catch {
      throw new ConfigError(
        `--policy-configmap ${ref}: not in a pod, so give its namespace too (--policy-configmap NAMESPACE/${ref})`,
      );
    }
  }
  const dns = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
  if (!namespace || !name || !dns.test(namespace) || !dns.test(name))
    throw new ConfigError(`--policy-configmap ${ref}: expected NAME or NAMESPACE/NAME (lower-case DNS names)`);
  const path = `/api/v1/namespaces/${namespace}/configmaps/${name}`;
  const describe = `configmap ${namespace}/${name}`;
  return {
    describe,
    configMap: { namespace, name },
    read: () =>
      getJson(credentials(), path).then(
        ({ status, body }) => {
          if (status === 404)
            return {
              problem:
                `there is no such ConfigMap (create it with \`tower install agent --policy-preset …\`, or ` +
                `kubectl -n ${namespace} create configmap ${name} --from-file=${POLICY_KEY}=FILE)`,
            };
          if (status === 401 || status === 403)
            return { problem: `the agent may not read it (${status}): grant it get on configmaps/${name}` };
          if (status !== 200) return { problem: `the kube-apiserver answered ${status}`, transient: true };
          const data = (body as { data?: Record<string, unknown> } | undefined)?.data;
          const text = data?.[POLICY_KEY];
          if (typeof text !== 'string') return { problem: `it has no ${POLICY_KEY} key` };
          return { text };
        },
        (err: Error) => ({ problem: `cannot read it: ${err.message}`, transient: true }),
      ),
  };
}

/** One GET to the member's kube-apiserver with the agent's own credentials. */
function getJson(c: Credentials, path: string): Promise<{ status: number; body: unknown }> {
  const hp = splitHostPort(c.hostPort);
  const host = hostOf(c.hostPort);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host,
        port: hp?.port ?? 443,
        servername: isIP(host) ? undefined : host,
        path,
        ca: c.caData,
        cert: c.certData,
        key: c.keyData,
        headers: {
          accept: 'application/json',
          ...(c.bearerToken ? { authorization: `Bearer ${c.bearerToken.toString('latin1').trim()}` } : {}),
        },
        timeout: READ_TIMEOUT_MS,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (d: Buffer) => {
          size += d.length;
          if (size > MAX_POLICY_BYTES * 2) req.destroy(new Error('the answer is too large'));
          else chunks.push(d);
        });
        res.on('end', () => {
          let body: unknown;
          try {
            body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            body = undefined;
          }
          resolve({ status: res.statusCode ?? 0, body });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${READ_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** Which upstream a channel reaches: the policy judges kube-apiserver requests, and says if ks-apiserver is carried. */
export type PolicyUpstream = 'kube-apiserver' | 'ks-apiserver';

/** Counts by outcome, read by the agent's metrics. */
export interface PolicyStats {
  allowed: number;
  /** refusals by rule name, or by "(default)", "(unjudgeable)", "(unavailable)", "(kubesphere)", "(policy-itself)" */
  refused: Map<string, number>;
  /** 1 while a policy is loaded and fresh */
  ok: boolean;
  reloads: number;
}

/**
 * The member policy in force, and the agent's judgment of each request head with it: undefined to
 * carry the request, or the 403 (a Kubernetes Status naming the policy and the rule) to answer instead.
 */
/** the request's Audit-ID, read only for a refusal's log line: a request that passes costs nothing more */
function auditIdOf(lines: HeadLines): string | undefined {
  return lines.find((l) => l.name === AUDIT_ID_HEADER)?.value;
}

export class PolicyHolder {
  readonly origin: PolicyOrigin;
  readonly #cluster: string;
  readonly #log: Logger;
  #policy: MemberPolicy | undefined;
  #problem: string | undefined = 'not read yet';
  #text: string | undefined;
  #lastRead = 0;
  #timer: NodeJS.Timeout | undefined;
  #reading = false;
  /** the first read is the command's to report: once started, failures are logged */
  #started = false;
  readonly stats: PolicyStats = { allowed: 0, refused: new Map(), ok: false, reloads: 0 };

  constructor(origin: PolicyOrigin, cluster: string, log: Logger) {
    this.origin = origin;
    this.#cluster = cluster;
    this.#log = log;
  }

  /** Reads the policy once, and fails with the reason when it cannot be used; then keeps reading it. */
  async start(): Promise<void> {
    await this.#read();
    if (!this.#policy) throw new ConfigError(`member policy (${this.origin.describe}): ${this.#problem}`);
    this.#started = true;
    this.#timer = setInterval(() => void this.#read(), POLICY_POLLING_MS);
    this.#timer.unref();
  }

  close(): void {
    clearInterval(this.#timer);
  }

  /** the policy as last read, unless it failed or went stale */
  get #inForce(): MemberPolicy | undefined {
    if (this.#policy && performance.now() - this.#lastRead > POLICY_STALE_MS) {
      this.#fail(`not read for ${POLICY_STALE_MS / 1000} s`);
    }
    return this.#problem === undefined ? this.#policy : undefined;
  }

  /** The agent's judgment of one request head. */
  judge(upstream: PolicyUpstream, method: string, target: string, lines: HeadLines): Buffer | undefined {
    const policy = this.#inForce;
    if (!policy)
      return this.#refuse('(unavailable)', `cannot be used: ${this.#problem}`, { method, auditId: auditIdOf(lines) });
    if (upstream === 'ks-apiserver') {
      if (policy.kubesphere === 'allow') return this.#allow();
      return this.#refuse('(kubesphere)', 'does not carry requests to ks-apiserver (kubesphere: deny)', {
        method,
        auditId: auditIdOf(lines),
      });
    }
    const info = requestInfo(method, target, lines);
    if (typeof info === 'string')
      return this.#refuse('(unjudgeable)', `cannot judge a request with ${info}`, {
        method,
        auditId: auditIdOf(lines),
      });
    const own = this.origin.configMap;
    if (
      own &&
      info.resourceRequest &&
      info.apiGroup === '' &&
      info.resource === 'configmaps' &&
      info.namespace === own.namespace &&
      !READS.has(info.verb)
    )
      return this.#refuse('(policy-itself)', 'never lets the tunnel write the ConfigMaps beside it', {
        auditId: auditIdOf(lines),
        user: info.subject.agent ? '@agent' : info.subject.user,
        verb: info.verb,
        namespace: info.namespace,
      });
    const verdict = judge(policy, info);
    if (verdict.allowed) return this.#allow();
    const what = describeRequest(info);
    const why = verdict.rule ? `rule "${verdict.rule}" denies ${what}` : `no rule allows ${what} (default: deny)`;
    return this.#refuse(verdict.rule ?? '(default)', `refuses this request: ${why}`, {
      auditId: auditIdOf(lines),
      user: info.subject.agent ? '@agent' : info.subject.user,
      groups: info.subject.groups.join(','),
      verb: info.verb,
      resource: info.resourceRequest ? info.resource : undefined,
      namespace: info.namespace || undefined,
      path: info.path,
    });
  }

  #allow(): undefined {
    this.stats.allowed++;
    return undefined;
  }

  #refuse(rule: string, why: string, fields: Record<string, string | undefined>): Buffer {
    this.stats.refused.set(rule, (this.stats.refused.get(rule) ?? 0) + 1);
    this.#log.warn('member policy refused a request', { rule, ...fields });
    const message = `tower agent of cluster "${this.#cluster}": the member policy (${this.origin.describe}) ${why}`;
    return Buffer.from(rawStatus({ status: 403, message }));
  }

  async #read(): Promise<void> {
    if (this.#reading) return;
    this.#reading = true;
    try {
      const r = await this.origin.read();
      if ('problem' in r) {
        // a read that failed on the way keeps the last policy, until it goes stale
        if (r.transient && this.#policy && performance.now() - this.#lastRead <= POLICY_STALE_MS) {
          this.#log.debug(1, 'cannot read the member policy; keeping the last one', { problem: r.problem });
          return;
        }
        this.#text = undefined;
        this.#fail(r.problem);
        return;
      }
      this.#lastRead = performance.now();
      if (r.text === this.#text && this.#problem === undefined) return;
      this.#text = r.text;
      try {
        this.#policy = parsePolicy(r.text);
      } catch (err) {
        if (!(err instanceof PolicyError)) throw err;
        this.#policy = undefined;
        this.#fail(`it is malformed: ${err.message}`);
        return;
      }
      this.#problem = undefined;
      this.stats.ok = true;
      this.stats.reloads++;
      this.#log.info('member policy in force', {
        from: this.origin.describe,
        rules: this.#policy.rules.length,
        default: this.#policy.default,
        kubesphere: this.#policy.kubesphere,
      });
    } finally {
      this.#reading = false;
    }
  }

  #fail(problem: string): void {
    if (this.#problem === problem) return;
    this.#problem = problem;
    this.stats.ok = false;
    if (!this.#started) return;
    this.#log.error('member policy cannot be used; every request is refused until it is fixed', {
      from: this.origin.describe,
      problem,
    });
  }
}
