/**
 * Every request the gateway answers has an Audit-ID of tower's choosing: sent to the member (whose
 * kube-apiserver writes it into its audit events), returned to the client, and written in the access
 * log, so that the three can be joined. A client's own Audit-ID never travels: it could name another
 * request's. Only a replica that forwards a request (a signed peer route) hands its ID on. Here, in
 * http/, so that the agent reads the same header.
 */
import { randomUUID } from 'node:crypto';

/** the header kube-apiserver takes a request's audit ID from, and answers it in */
export const AUDIT_ID_HEADER = 'audit-id';

/** what tower makes (randomUUID's form); anything else a replica says is not taken */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** a fresh ID for a request */
export function newAuditId(): string {
  return randomUUID();
}

/** the ID a forwarding replica sent, when it is one tower makes */
export function peerAuditId(header: string | string[] | undefined): string | undefined {
  return typeof header === 'string' && UUID.test(header) ? header : undefined;
}
