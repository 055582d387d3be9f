/**
 * Headers as they cross the gateway: what of a client's request may travel on, and what of an
 * answer may come back. Each upstream builds its own request headers from these (`Upstream.headers`).
 */
import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { AUDIT_ID_HEADER } from '../../http/audit-id.ts';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
]);
/**
 * never forwarded from a client: the body's framing is tower's to set (whatever the client's was),
 * and a 100-continue is the gateway's to answer
 */
const CLIENT_FRAMING = new Set(['content-length', 'transfer-encoding', 'expect']);
const BEARER_PROTOCOL = 'base64url.bearer.authorization.k8s.io.';

/**
 * A client's request headers as they may travel on: without hop-by-hop ones (and those its
 * Connection names), Host, its framing, tower's own X-Tower-* and its Audit-ID (never a client's
 * word; each upstream sets tower's), and what `drop` names.
 */
export function forwardedHeaders(req: IncomingMessage, drop: (name: string) => boolean): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  const listed = new Set((req.headers.connection ?? '').split(',').map((s) => s.trim().toLowerCase()));
  for (const [k, v] of Object.entries(req.headers)) {
    if (
      HOP_BY_HOP.has(k) ||
      CLIENT_FRAMING.has(k) ||
      listed.has(k) ||
      k === 'host' ||
      v === undefined ||
      k.startsWith('x-tower-') ||
      k === AUDIT_ID_HEADER ||
      drop(k)
    )
      continue;
    out[k] = v;
  }
  return out;
}

/** a subprotocol as RFC 6455 allows it: an HTTP token */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * kube-apiserver also takes a bearer token from a WebSocket subprotocol (`base64url.bearer.
 * authorization.k8s.io.<token>`): on a certificate's route that is the client's word about who it
 * is, and it goes with the rest of them. The subprotocols that name a stream protocol stay; one that
 * is not a token goes too (kube-apiserver trims Unicode spaces that JavaScript's trim() keeps, so
 * `\u3000base64url.bearer…` would otherwise pass here and count there).
 */
export function dropBearerProtocol(out: OutgoingHttpHeaders): void {
  const offered = out['sec-websocket-protocol'];
  if (offered === undefined) return;
  const kept = (Array.isArray(offered) ? offered.join(',') : String(offered))
    .split(',')
    .map((p) => p.trim())
    .filter((p) => TOKEN.test(p) && !p.toLowerCase().includes(BEARER_PROTOCOL));
  if (kept.length > 0) out['sec-websocket-protocol'] = kept.join(', ');
  else delete out['sec-websocket-protocol'];
}

/**
 * An answer's headers as they go back to the client: without hop-by-hop ones, and with tower's
 * Audit-ID instead of the member's (the same, unless the member did not take tower's: the access
 * log, which the client's ID must join, has tower's).
 */
export function downstreamHeaders(up: IncomingMessage, auditId: string | undefined): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  if (auditId) out['Audit-ID'] = auditId;
  const listed = new Set((up.headers.connection ?? '').split(',').map((s) => s.trim().toLowerCase()));
  for (const [k, v] of Object.entries(up.headers)) {
    if (HOP_BY_HOP.has(k) || listed.has(k) || v === undefined || k === AUDIT_ID_HEADER) continue;
    out[k] = v;
  }
  return out;
}

/**
 * An answer's head as raw bytes, for a socket that has no ServerResponse (an upgrade's), with
 * tower's Audit-ID instead of the member's.
 */
export function rawHead(res: IncomingMessage, auditId: string | undefined, close = false): string {
  let s = `HTTP/1.1 ${res.statusCode} ${res.statusMessage}\r\n`;
  if (auditId) s += `Audit-ID: ${auditId}\r\n`;
  for (let i = 0; i < res.rawHeaders.length; i += 2) {
    const name = res.rawHeaders[i]!;
    if (name.length === AUDIT_ID_HEADER.length && name.toLowerCase() === AUDIT_ID_HEADER) continue;
    // a relayed refusal is framed by closing the connection: Node already removed the chunking
    if (close && /^(connection|transfer-encoding|content-length)$/i.test(name)) continue;
    s += `${name}: ${res.rawHeaders[i + 1]}\r\n`;
  }
  if (close) s += 'Connection: close\r\n';
  return s + '\r\n';
}

/** a status line the gateway can relay as it is: a known code range, a reason without control characters */
export function validStatusLine(res: IncomingMessage): boolean {
  const code = res.statusCode ?? 0;
  return code >= 100 && code <= 599 && !/[\x00-\x08\x0a-\x1f\x7f]/.test(res.statusMessage ?? '');
}
