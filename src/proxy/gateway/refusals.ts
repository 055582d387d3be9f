/**
 * Every answer the gateway makes itself instead of the member's, by name. A stage returns one of
 * these; `http/status.ts` turns it into a Kubernetes Status in one place. Each message names the
 * thing and the fix, and kubectl prints it as the server's own.
 */
import type { Refusal } from '../../http/status.ts';
import { truncate } from '../../observe/log.ts';
import type { Target } from './route.ts';

const mib = (n: number) => (n / 2 ** 20).toFixed(1);

/** what a target is called in messages */
export function targetName(target: Target): string {
  return target === 'kubesphere' ? 'ks-apiserver' : 'kube-apiserver';
}

export const refusals = {
  certificateRequired: (problem: string): Refusal => ({
    status: 401,
    message:
      `tower gateway: a client certificate signed by tower's CA is required (this connection has ${problem}); ` +
      'get a kubeconfig with: tower kubeconfig <cluster>',
  }),
  certificateRevoked: (why: string): Refusal => ({
    status: 401,
    message: `tower gateway: ${why}; ask for a new kubeconfig (tower kubeconfig <cluster>)`,
  }),
  noRoute: (url: string): Refusal => ({
    status: 404,
    message:
      `tower gateway: no route for ${JSON.stringify(truncate(url))}; ` + 'paths look like /clusters/<name>/api/...',
  }),
  invalidClusterName: (name: string, problem: string): Refusal => ({
    status: 400,
    message: `tower gateway: invalid cluster name ${JSON.stringify(truncate(name))}: ${problem}`,
  }),
  otherCluster: (bound: string, name: string): Refusal => ({
    status: 403,
    message:
      `tower gateway: this client certificate is for cluster "${bound}", not "${name}" ` +
      `(get one with: tower kubeconfig ${name})`,
  }),
  unboundCertificate: (name: string): Refusal => ({
    status: 403,
    message:
      `tower gateway: this client certificate is not bound to a cluster (get one with: tower kubeconfig ${name}; ` +
      'or start the proxy with --allow-unbound-certificates)',
  }),
  unknownCluster: (name: string): Refusal => ({
    status: 404,
    message: `cluster "${name}" not found in tower (register it with: tower token ${name})`,
  }),
  /** the certificate names no identity that can be forwarded */
  certificateIdentity: (problem: string): Refusal => ({ status: 403, message: `tower gateway: ${problem}` }),
  peerNoTarget: (replica: string): Refusal => ({
    status: 400,
    message: `tower gateway: replica ${replica} forwarded a request for no valid target`,
  }),
  peerUnsigned: (replica: string, problem: string): Refusal => ({
    status: 403,
    message: `tower gateway: a request from replica ${replica} with ${problem}`,
  }),
  peerInvalidClusterName: (replica: string, name: string, problem: string): Refusal => ({
    status: 400,
    message:
      `tower gateway: replica ${replica} forwarded a request for an invalid cluster name ` +
      `${JSON.stringify(truncate(name))}: ${problem}`,
  }),
  peerNoIdentity: (replica: string): Refusal => ({
    status: 400,
    message: `tower gateway: replica ${replica} forwarded a request without a valid identity`,
  }),
  peerApiOnly: (): Refusal => ({ status: 403, message: 'tower gateway: /peer/ is for other replicas of this proxy' }),
  notAnnounced: (cluster: string, target: Target): Refusal => ({
    status: 502,
    message:
      `the agent of cluster "${cluster}" announced no ` +
      (target === 'kubesphere'
        ? 'ks-apiserver (KubeSphereSvcHost; agent flag --kubesphere-service)'
        : 'kube-apiserver'),
  }),
  /**
   * No agent of the cluster anywhere. While one may be reconnecting (it left moments ago) clients are
   * asked to retry (client-go does, up to 10 times, 1 s apart); otherwise retrying cannot help: the
   * answer is at once, and discovery's is text, so that kubectl prints it rather than a generic line.
   */
  noAgent: (cluster: string, how: { reconnecting?: boolean; discovery?: boolean } = {}): Refusal => {
    const message =
      `cluster "${cluster}" has no agent connected to tower ` +
      `(start one with the command that "tower token ${cluster}" prints)`;
    if (how.reconnecting) return { status: 503, retryAfter: 1, message };
    return how.discovery ? { status: 502, text: true, message: `tower gateway: ${message}` } : { status: 503, message };
  },
  badImpersonation: (problem: string): Refusal => ({ status: 400, message: `tower gateway: ${problem}` }),
  impersonationDenied: (why: string): Refusal => ({ status: 403, message: `tower gateway: ${why}` }),
  impersonationUnknown: (cluster: string, user: string, err: Error): Refusal => ({
    status: 502,
    message: `tower gateway: cannot ask cluster "${cluster}" whether user "${user}" may impersonate: ` + err.message,
  }),
  inflightFull: (cluster: string, max: number): Refusal => ({
    status: 429,
    retryAfter: 1,
    message:
      `tower gateway: cluster "${cluster}" has ${max} requests in flight through tower, its limit ` +
      "(the proxy's --max-requests-inflight); retry shortly",
  }),
  stalledFull: (reservedBytes: number, maxBytes: number): Refusal => ({
    status: 429,
    retryAfter: 1,
    message:
      `tower gateway: answers whose clients stopped reading hold ${mib(reservedBytes)} MiB in this proxy, ` +
      `its limit of ${mib(maxBytes)} MiB (the proxy's --max-stalled-memory); retry shortly`,
  }),
  connectNotServed: (): Refusal => ({
    status: 405,
    message:
      'tower gateway: CONNECT is not served here; ' +
      'the gateway serves Kubernetes API requests under /clusters/<name>/',
  }),
  malformedRequest: (err: NodeJS.ErrnoException): Refusal => ({
    status: 400,
    message: `tower gateway: malformed HTTP request (${err.code ?? err.message})`,
  }),
  malformedBody: (err: NodeJS.ErrnoException): Refusal => ({
    status: 400,
    message: `tower gateway: malformed request body (${err.code ?? err.message}); nothing more of it was forwarded`,
  }),
  continuePipelined: (): Refusal => ({
    status: 417,
    message:
      'tower gateway: a request that expects 100-continue cannot be pipelined behind another; ' +
      'send it on a connection of its own, or without Expect',
  }),
  /** a head whose body could be read more than one way */
  ambiguousFraming: (problem: string): Refusal => ({ status: 400, message: `tower gateway: ${problem}` }),
  upgradeWithBody: (what: string): Refusal => ({
    status: 400,
    message: `tower gateway: an upgrade request carries no body (this one has ${what})`,
  }),
  cannotForward: (cluster: string, err: Error, upgrade = false): Refusal => ({
    status: 502,
    message:
      `tower gateway: cannot forward this ${upgrade ? 'upgrade' : 'request'} to cluster "${cluster}": ` +
      `${err.message}`,
  }),
  timedOut: (target: Target, cluster: string, timeoutMs: number): Refusal => ({
    status: 504,
    message:
      `tower gateway: the ${targetName(target)} of cluster "${cluster}" did not answer within ${timeoutMs / 1000}s ` +
      "(the proxy's --request-timeout)",
  }),
  unreachable: (target: Target, cluster: string, through: string, err: Error): Refusal => ({
    status: 502,
    message:
      `tower gateway: cannot reach the ${targetName(target)} of cluster "${cluster}" through ${through}: ` +
      `${err.message}`,
  }),
  badAnswer: (target: Target, cluster: string, problem: string): Refusal => ({
    status: 502,
    message: `tower gateway: the ${targetName(target)} of cluster "${cluster}" answered with ${problem}`,
  }),
  badUpgradeAnswer: (target: Target, cluster: string): Refusal => ({
    status: 502,
    message:
      `tower gateway: the ${targetName(target)} of cluster "${cluster}" ` +
      'answered the upgrade with an invalid status line',
  }),
  upgradeFailed: (cluster: string, err: Error): Refusal => ({
    status: 502,
    message: `tower gateway: the upgrade through cluster "${cluster}"'s agent failed: ${err.message}`,
  }),
};

/** whether a stage's answer is a refusal rather than its value */
export function isRefusal(v: object): v is Refusal {
  return 'status' in v && 'message' in v;
}
