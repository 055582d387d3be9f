/**
 * The first stage: a request's head and its connection's certificate → where it goes and as whom,
 * or the refusal. Pure but for the store's `knows` and a log line for an unsigned replica request.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { peerAuditId } from '../../http/audit-id.ts';
import type { Refusal } from '../../http/status.ts';
import type { Logger } from '../../observe/log.ts';
import { clusterNameProblem } from '../../config/names.ts';
import type { CertificateFacts } from '../../pki/revocations.ts';
import type { Identity } from '../identity.ts';
import { decodeIdentity, PEER_HEADERS, type PeerSignature } from '../peer-protocol.ts';
import { refusals } from './refusals.ts';

/** what the requests reach in the member: its kube-apiserver or its ks-apiserver */
export type Target = 'kubernetes' | 'kubesphere';

const CLUSTER_PATH = /^\/clusters\/([^/?]*)(\/[^?]*)?(\?.*)?$/;

/** Where a request goes, and as whom. */
export interface Route {
  cluster: string;
  /** the path as the member sees it */
  path: string;
  target: Target;
  /** the certificate's identity, when requests act as it */
  identity?: Identity;
  /** the replica that forwarded this request: it is served by this replica's agents or not at all */
  fromPeer?: string;
  /** the request's Audit-ID: the forwarding replica's on a peer route, else the gateway's, once routed */
  auditId?: string;
}

/** What a TLS connection's certificate says, read once per connection. */
export interface ClientCertificate {
  /** why it is not accepted */
  problem?: string;
  /** the cluster it is bound to */
  bound: string | undefined;
  /** who it names, or why that cannot be forwarded; undefined where requests do not act as it */
  identity: Identity | string | undefined;
  /** the replica it names (a replica's own certificate) */
  replica?: string;
  /** what a revocation goes by; undefined for a replica's own certificate, which only replicas hold */
  facts?: CertificateFacts;
}

/** How one gateway routes: fixed when it is made. */
export interface RouteRules {
  /** a cluster's own port serves this cluster at the root, instead of /clusters/<name>/ */
  cluster?: string;
  /** what the requests reach in the member */
  target: Target;
  /** HTTPS with client certificates: every request has a ClientCertificate */
  tls: boolean;
  allowUnboundCertificates: boolean;
  /** whether requests for `target` act as the certificate's identity */
  actsAsCertificate: (target: Target) => boolean;
  /** whether the store knows the cluster */
  knows: (name: string) => boolean;
  /** why a certificate is revoked now, or undefined (asked on every request: revocation takes effect at once) */
  revoked?: (facts: CertificateFacts) => string | undefined;
  /** checks what another replica forwarded (where replicas exist) */
  signature?: PeerSignature;
  log: Logger;
}

export interface RequestHead {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

/** Checks the client certificate and the route. */
export function route(head: RequestHead, cert: ClientCertificate | undefined, rules: RouteRules): Route | Refusal {
  if (cert?.problem) return refusals.certificateRequired(cert.problem);
  const revoked = cert?.facts && rules.revoked?.(cert.facts);
  if (revoked) return refusals.certificateRevoked(revoked);
  if (cert?.replica && !rules.cluster && rules.signature) return peerRoute(head, cert.replica, rules);
  const bound = cert?.bound;
  let name: string;
  let path: string;
  const m = rules.cluster ? undefined : CLUSTER_PATH.exec(head.url);
  if (rules.cluster) {
    name = rules.cluster;
    path = head.url || '/';
  } else if (m) {
    name = safeDecode(m[1]!);
    path = (m[2] || '/') + (m[3] ?? '');
  } else if (bound) {
    // `kubectl get --raw /version` drops the server's path; the certificate still names the cluster
    name = bound;
    path = head.url || '/';
  } else {
    return refusals.noRoute(head.url);
  }
  const problem = clusterNameProblem(name);
  if (problem) return refusals.invalidClusterName(name, problem);
  // before the store is asked: a bound certificate learns nothing of other clusters, existing or not
  if (bound && bound !== name) return refusals.otherCluster(bound, name);
  if (rules.tls && !bound && !rules.cluster && !rules.allowUnboundCertificates)
    return refusals.unboundCertificate(name);
  if (!rules.knows(name)) return refusals.unknownCluster(name);
  const target = rules.target;
  let identity: Identity | undefined;
  if (rules.tls && rules.actsAsCertificate(target)) {
    if (typeof cert!.identity === 'string') return refusals.certificateIdentity(cert!.identity);
    identity = cert!.identity;
  }
  return { path, cluster: name, target, identity };
}

/** A request another replica forwarded: cluster, target and the identity it verified come in its headers. */
function peerRoute(head: RequestHead, replica: string, rules: RouteRules): Route | Refusal {
  const name = String(head.headers[PEER_HEADERS.cluster] ?? '');
  const target = head.headers[PEER_HEADERS.target];
  if (target !== 'kubernetes' && target !== 'kubesphere') return refusals.peerNoTarget(replica);
  const identityHeader = head.headers[PEER_HEADERS.identity];
  const unsigned = rules.signature!.problem(head.headers[PEER_HEADERS.signature], {
    method: head.method,
    path: head.url,
    cluster: name,
    target,
    identity: typeof identityHeader === 'string' ? identityHeader : '',
  });
  if (unsigned) {
    rules.log.warn('refused a request on a replica connection that no replica signed', { replica, why: unsigned });
    return refusals.peerUnsigned(replica, unsigned);
  }
  const problem = clusterNameProblem(name);
  if (problem) return refusals.peerInvalidClusterName(replica, name, problem);
  if (!rules.knows(name)) return refusals.unknownCluster(name);
  let identity: Identity | undefined;
  if (rules.actsAsCertificate(target)) {
    identity = decodeIdentity(typeof identityHeader === 'string' ? identityHeader : undefined);
    if (!identity) return refusals.peerNoIdentity(replica);
  }
  const auditId = peerAuditId(head.headers[PEER_HEADERS.auditId]);
  return { path: head.url || '/', cluster: name, target, identity, fromPeer: replica, ...(auditId && { auditId }) };
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
