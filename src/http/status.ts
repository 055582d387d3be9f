import { STATUS_CODES, type ServerResponse } from 'node:http';

/**
 * Answers tower makes itself, as Kubernetes `Status` objects: kubectl and client-go print their
 * message as the server's own (`Error from server (ServiceUnavailable): cluster "x" has no agent …`).
 */
export interface Refusal {
  status: number;
  message: string;
  /** seconds a client should wait before retrying (429); sent as Retry-After and in the Status */
  retryAfter?: number;
  /**
   * sent as text/plain rather than a Status: client-go's discovery reads a failed answer's body only as
   * text, and prints a 5xx's text (not a 503's); kubectl then says why it cannot go on
   */
  text?: boolean;
}

/** metav1.StatusReason by code; 502 has none in Kubernetes, and says what it is */
const REASONS: Record<number, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  429: 'TooManyRequests',
  500: 'InternalError',
  502: 'BadGateway',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

export function statusReason(code: number): string {
  return REASONS[code] ?? 'Unknown';
}

export function statusBody(r: Refusal): string {
  const details = r.retryAfter !== undefined ? { retryAfterSeconds: r.retryAfter } : undefined;
  return (
    JSON.stringify({
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: r.message,
      reason: statusReason(r.status),
      details,
      code: r.status,
    }) + '\n'
  );
}

/**
 * The Status as a whole HTTP response, for a socket that has no ServerResponse (upgrades, parse
 * errors), with the request's Audit-ID when it has one (a UUID tower made: nothing to escape).
 */
export function rawStatus(r: Refusal, auditId?: string): string {
  const body = statusBody(r);
  const retry = r.retryAfter !== undefined ? `Retry-After: ${r.retryAfter}\r\n` : '';
  const audit = auditId ? `Audit-ID: ${auditId}\r\n` : '';
  return (
    `HTTP/1.1 ${r.status} ${STATUS_CODES[r.status] ?? 'Error'}\r\nContent-Type: application/json\r\n${audit}` +
    `${retry}Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
  );
}

/**
 * Never throws: a response that can no longer carry a Status (headers gone out, socket gone) is ended
 * as it is. With the request's Audit-ID when it has one.
 */
export function sendStatus(res: ServerResponse, r: Refusal, auditId?: string): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = r.text ? `${r.message}\n` : statusBody(r);
  const headers: Record<string, string | number> = {
    'content-type': r.text ? 'text/plain; charset=utf-8' : 'application/json',
    'content-length': Buffer.byteLength(body),
  };
  if (r.retryAfter !== undefined) headers['retry-after'] = r.retryAfter;
  if (auditId) headers['Audit-ID'] = auditId;
  // the reason phrase is set explicitly: a failed writeHead leaves the upstream's bad one behind
  res.writeHead(r.status, STATUS_CODES[r.status] ?? 'Error', headers);
  res.end(body);
}
