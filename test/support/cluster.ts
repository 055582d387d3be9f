import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { removeDir, ROOT, run, tempDir, tower } from './tower.ts';

const SCRIPT = join(ROOT, 'scripts', 'test-cluster.sh');
/** every request's event, without bodies, once its response is complete */
const AUDIT_POLICY = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
`;

/** A real kube-apiserver v1.20.2 + etcd on loopback (scripts/test-cluster.sh). */
export interface MemberCluster {
  dir: string;
  server: string;
  /** admin kubeconfig with a system:masters client certificate */
  kubeconfig: string;
  /** a system:masters bearer token */
  token: string;
  caPem: string;
  /** the apiserver's audit log (JSON lines, one event per request), when started with `audit` */
  auditLog?: string;
  /** stops etcd and the apiserver (by PID) and removes the state dir */
  stop(): Promise<void>;
  /** an API outage: kill -9 the apiserver (etcd keeps its state) */
  killApiserver(): Promise<void>;
  /** the apiserver back as it was, on the same port; resolves when it is ready */
  startApiserver(): Promise<void>;
}

/**
 * `apiserverArgs`: more kube-apiserver flags, e.g. `--enable-admission-plugins=PodSecurityPolicy` (lists add up);
 * `audit`: an audit log of every request at Metadata level (`auditLog`)
 */
export async function startMemberCluster(
  opts: { apiserverArgs?: string[]; audit?: boolean } = {},
): Promise<MemberCluster> {
  const dir = tempDir('apiserver');
  const args = [...(opts.apiserverArgs ?? [])];
  const auditLog = opts.audit ? join(dir, 'audit.log') : undefined;
  if (auditLog) {
    writeFileSync(join(dir, 'audit-policy.yaml'), AUDIT_POLICY);
    args.push(`--audit-policy-file=${join(dir, 'audit-policy.yaml')}`, `--audit-log-path=${auditLog}`);
  }
  const r = await run('bash', [SCRIPT, 'start', dir], {
    timeoutMs: 120_000,
    env: { APISERVER_ARGS: args.join(' ') },
  });
  const m = /ready (https:\/\/\S+)/.exec(r.stdout);
  if (r.code !== 0 || !m) throw new Error(`kube-apiserver did not start:\n${r.stdout}\n${r.stderr}`);
  return {
    dir,
    server: m[1]!,
    kubeconfig: join(dir, 'admin.kubeconfig'),
    token: readFileSync(join(dir, 'token'), 'utf8').trim(),
    caPem: readFileSync(join(dir, 'pki', 'ca.crt'), 'utf8'),
    auditLog,
    killApiserver: async () => {
      const k = await run('bash', [SCRIPT, 'kill-apiserver', dir]);
      if (k.code !== 0) throw new Error(`kill-apiserver failed: ${k.stderr}`);
    },
    startApiserver: async () => {
      const s = await run('bash', [SCRIPT, 'start-apiserver', dir], { timeoutMs: 120_000 });
      if (s.code !== 0) throw new Error(`start-apiserver failed: ${s.stdout}${s.stderr}`);
    },
    stop: async () => {
      await run('bash', [SCRIPT, 'stop', dir]);
      removeDir(dir);
    },
  };
}

/**
 * What `tower install agent` prints for cluster `name` (with `extra` flags: a policy preset, say), applied to the
 * member, and a token of the agent's ServiceAccount: an agent outside the member then runs with exactly the RBAC
 * the install grants.
 */
export async function installAgent(
  member: MemberCluster,
  name: string,
  extra: string[] = [],
): Promise<{ manifests: string; saToken: string }> {
  const printed = await tower([
    'install',
    'agent',
    '--with-namespace',
    '--name',
    name,
    '--token',
    'a'.repeat(64),
    '--proxy-server',
    'http://tower.example:8080',
    '--proxy-fingerprint',
    `SHA256:${'A'.repeat(43)}`,
    ...extra,
  ]);
  if (printed.code !== 0) throw new Error(`tower install agent failed: ${printed.stderr}`);
  const kubectl = (args: string[], input?: string) =>
    run('kubectl', ['--kubeconfig', member.kubeconfig, ...args], { input, timeoutMs: 60_000 });
  const applied = await kubectl(['apply', '-f', '-'], printed.stdout);
  if (applied.code !== 0) throw new Error(`applying tower install agent failed: ${applied.stderr}`);
  const token = await kubectl(['-n', 'kubesphere-system', 'create', 'token', 'tower-agent', '--duration', '1h']);
  if (token.code !== 0) throw new Error(`kubectl create token failed: ${token.stderr}`);
  return { manifests: printed.stdout, saToken: token.stdout.trim() };
}
