// The framing harness's oracle: what reached the member (the recording upstream) and what each
// client read back, against what the clients' heads and framing describe. Every rule is about the
// far side of the wire or about whose answer a client got; none is about what tower does today.
import { describeShape, shapeTag, type Encoded, type Expectation, type RequestShape } from './framing.ts';
import { show, type Outcome } from './raw-http.ts';
import type { MemberAuth, Received, RecorderEvent, RecorderServer } from './recording-upstream.ts';

export const MARKER = /\bh-\d+\b/;

/** Who the member must see a client's requests as. */
export interface ExpectedIdentity {
  server: RecorderServer;
  auth: MemberAuth;
  /**
   * the exact Authorization the member must get (the agent's token, or the client's own on the ks-apiserver port);
   * undefined: none at all
   */
  authorization: string | undefined;
  impersonateUser: string[];
  impersonateGroup: string[];
}

/** One request of a round, and what became of it. */
export interface Sent {
  client: { name: string; identity: ExpectedIdentity };
  /** who the member must see this request as: the client, or on the ks-apiserver port whomever its own headers name */
  identity: ExpectedIdentity;
  connection: number;
  marker: string;
  shape: RequestShape;
  encoded: Encoded;
  expected: Expectation;
  outcome: Outcome;
  /**
   * why its connection may have ended before its answer: an earlier refusal, upgrade, HTTP/1.0 request or close, or a
   * failure already reported
   */
  endedBy: 'refusal' | 'upgrade' | 'http10' | 'close' | 'failure' | undefined;
  /** a request pipelined after it may be refused: tower may close the connection there, before this one is answered */
  closeAhead: boolean;
}

/** A broken rule: a short name (for tallies), the request's shape when one is at fault, and what happened. */
export interface Violation {
  rule: string;
  shape?: string;
  text: string;
}

/** Judges one round: the member's events since it began, and every request sent in it. */
export function judge(sent: Sent[], events: RecorderEvent[], issuedEarlier: ReadonlySet<string>): Violation[] {
  const v: Violation[] = [];
  const byMarker = new Map(sent.map((s) => [s.marker, s]));
  const arrivals = new Map<string, Received[]>();
  const askers = new Set(sent.filter((s) => s.shape.impersonate).map((s) => s.client.identity.impersonateUser[0]));
  for (const e of events) {
    if (e.kind === 'garbage') {
      // a request whose body was cut off is judged as that request (below); a head cut off is judged here
      const cutRequest = events.some(
        (r) => r.kind === 'request' && !r.complete && r.connection === e.connection && r.server === e.server,
      );
      if (e.code !== 'HPE_INVALID_EOF_STATE')
        v.push({
          rule: 'bytes at the member that are not HTTP',
          text:
            `the member's ${e.server} got bytes that are not HTTP ` +
            `(${e.code}) on its connection ${e.connection}: ${show(e.bytes)}`,
        });
      else if (!cutRequest)
        v.push({
          rule: 'a head cut off at the member',
          text:
            `a connection to the member's ${e.server} ` +
            `(its connection ${e.connection}) ended in the middle of a request head`,
        });
      continue;
    }
    if (e.kind === 'review') {
      if (!askers.has(e.user) || e.impersonated || e.auth === 'none')
        v.push({
          rule: 'a review no request called for',
          text:
            `tower asked the member a SubjectAccessReview for ${JSON.stringify(e.user)} ` +
            `(auth ${e.auth}${e.impersonated ? ', impersonating' : ''}) ` +
            `that no request of this round called for`,
        });
      continue;
    }
    const what = `${e.method} ${e.url} as ${who(e)} (${e.server}, connection ${e.connection})`;
    if (/smuggled/.test(e.url)) {
      v.push({ rule: 'SMUGGLED', text: `SMUGGLED: the member received ${what}, a request that travelled in a body` });
      continue;
    }
    const marker = MARKER.exec(e.url)?.[0];
    if (marker && !byMarker.has(marker) && issuedEarlier.has(marker)) {
      v.push({
        rule: 'arrived after its round',
        text:
          `the member received ${what} only after the round that ` +
          `sent it was over (its client had stopped waiting or gone)`,
      });
      continue;
    }
    if (!marker || !byMarker.has(marker)) {
      v.push({ rule: 'a head no client sent', text: `the member received ${what}, whose head no client sent` });
      continue;
    }
    arrivals.set(marker, [...(arrivals.get(marker) ?? []), e]);
  }
  for (const s of sent) {
    const name = `${s.client.name}'s ${s.marker} (${describeShape(s.shape)})`;
    const add = (rule: string, text: string) => v.push({ rule, shape: shapeTag(s.shape), text: `${name}${text}` });
    const got = arrivals.get(s.marker) ?? [];
    if (got.length > 1) add('arrived more than once', ` reached the member ${got.length} times`);
    if (got[0]) arrivalRules(s, got[0], add);
    outcomeRules(s, got[0], add);
  }
  return v;
}

type Add = (rule: string, text: string) => void;

/** what reached the member for a request */
function arrivalRules(s: Sent, a: Received, add: Add): void {
  const id = s.identity;
  if (!s.expected.forwardable)
    add(
      'arrived though it must be refused',
      ` reached the member, but tower must refuse it (${s.expected.why.join('; ')})`,
    );
  if (a.method !== s.shape.method) add('arrived as another method', ` reached the member as a ${a.method}`);
  if (a.server !== id.server) add('arrived at the wrong server', ` reached the ${a.server}, not the ${id.server}`);
  const sameGroups = same([...a.impersonateGroup].sort(), [...id.impersonateGroup].sort());
  if (
    a.auth !== id.auth ||
    a.authorization !== id.authorization ||
    !same(a.impersonateUser, id.impersonateUser) ||
    !sameGroups ||
    a.impersonateOther.length > 0
  ) {
    add('arrived as someone else', ` reached the member as ${who(a)}, not as ${s.client.name} (${whoExpected(id)})`);
  }
  if (a.towerHeaders.length > 0)
    add("tower's own headers at the member", `: tower's own headers reached the member (${a.towerHeaders.join(', ')})`);
  if (a.overlapped)
    add(
      'pipelined into a channel',
      ' reached the member before the answer to the previous request on ' +
        'that connection had gone: something was pipelined into a channel',
    );
  // tower may drop a connection when a request after this one is malformed: what it had begun to forward is then cut
  const dropped = s.outcome.kind === 'closed' && s.closeAhead;
  if (!a.complete && !dropped)
    add(
      'cut off at the member',
      ` reached the member cut off: ${a.body.length} bytes of its body arrived, and then the connection ended`,
    );
  else if (a.complete && !a.body.equals(s.expected.body))
    add(
      'a body its framing does not describe',
      `: the member got a body of ${a.body.length} bytes ${show(a.body)}, ` +
        `but the client's framing describes ${s.expected.body.length} bytes ${show(s.expected.body)}`,
    );
  if (a.trailing.length > 0)
    add(
      'bytes after an upgrade head',
      `: ${a.trailing.length} bytes followed the upgrade request to the member: ${show(a.trailing)}`,
    );
  if (a.trailers.some((t) => t.startsWith('impersonate-') || t === 'authorization'))
    add('identity in trailers', `: identity trailers reached the member (${a.trailers.join(', ')})`);
}

/** what the client read back for a request */
function outcomeRules(s: Sent, a: Received | undefined, add: Add): void {
  const o = s.outcome;
  switch (o.kind) {
    case 'answer': {
      const ans = o.answer;
      const answered = ans.headers['x-recorder-url'];
      if (answered !== undefined) {
        const theirs = MARKER.exec(answered)?.[0];
        if (theirs !== s.marker)
          add(
            'ANSWERS CROSSED',
            ` got the member's answer to ${answered} ` +
              `(made as user ${JSON.stringify(ans.headers['x-recorder-user'] ?? '')}), not its own`,
          );
        else if (!a)
          add('an answer the member never gave', ' got an answer naming it, yet the member recorded no such request');
        if (ans.status !== 200)
          add("the member's answer altered", ` got the member's answer with status ${ans.status}, not 200`);
        // the body names the request too: an answer whose body does not was cut or spliced on the way
        if (s.shape.method !== 'HEAD' && MARKER.exec(jsonUrl(ans.body) ?? '')?.[0] !== theirs)
          add(
            'an answer corrupted',
            `: the member's answer reached the client corrupted, its body is ${show(ans.body)}`,
          );
      } else if (isTowerStatus(ans, s.shape.method)) {
        const message = statusMessage(ans.body);
        // a request pipelined after this one may be refused: a refusal this one may not get is most likely that one's,
        // written in its place
        // ... and a parse error of the bytes after a request that closes its connection is never that request's own
        const misplaced =
          (!s.expected.refusals.includes(ans.status) && s.closeAhead) || /HPE_CLOSED_CONNECTION/.test(message);
        if (misplaced) {
          add(
            "another request's refusal in its place",
            ` got a ${ans.status} that is not its own (${message}): it refuses bytes pipelined after this ` +
              `request, and took this one's answer's place${a ? ', though this one did reach the member' : ''}`,
          );
        } else {
          if (!s.expected.refusals.includes(ans.status))
            add(
              `refused with ${ans.status}`,
              (s.expected.refusals.length
                ? ` may be refused only with ${s.expected.refusals.join('/')}`
                : ' must reach the member') + `, but tower answered ${ans.status}: ${message}`,
            );
          if (a) add('refused, yet it arrived', ` was refused (${ans.status}), yet reached the member`);
        }
      } else {
        add(
          'an answer from no one',
          ` got an answer that is neither the member's nor a tower Status: ` +
            `${show(`${ans.head}\r\n\r\n${ans.body.toString('latin1')}`)}`,
        );
      }
      break;
    }
    case 'closed':
      if (!s.endedBy && !s.expected.silentClose && !s.closeAhead)
        add('closed without an answer', `: tower closed connection ${s.connection} without answering it`);
      // a head the client sent before the close may have been served (it is the client's own); one after a refusal may
      // not
      if (a && !s.closeAhead && s.endedBy !== 'http10' && s.endedBy !== 'failure')
        add(
          'arrived, never answered',
          ` reached the member, but its client never got an answer ` +
            `(its connection had ${s.endedBy ? `ended: ${s.endedBy}` : 'closed'})`,
        );
      break;
    case 'timeout':
      add('no answer', ': no answer within the read timeout');
      break;
    case 'garbage':
      add('an answer that is not HTTP', `: what came back is not an HTTP answer: ${show(o.bytes)}`);
      break;
    case 'unsent':
      break;
  }
}

/** an answer tower made itself: a Kubernetes Status with the code of the response (a HEAD's has no body to show it) */
export function isTowerStatus(
  ans: { status: number; headers: Record<string, string>; body: Buffer },
  method: string,
): boolean {
  if (ans.headers['x-recorder-url'] !== undefined || ans.status < 400) return false;
  if (method === 'HEAD') return /json/.test(ans.headers['content-type'] ?? '');
  try {
    const st = JSON.parse(ans.body.toString('utf8')) as { kind?: string; code?: number };
    return st.kind === 'Status' && st.code === ans.status;
  } catch {
    return false;
  }
}

function jsonUrl(body: Buffer): string | undefined {
  try {
    return String((JSON.parse(body.toString('utf8')) as { url?: string }).url);
  } catch {
    return undefined;
  }
}

function statusMessage(body: Buffer): string {
  try {
    return String((JSON.parse(body.toString('utf8')) as { message?: string }).message);
  } catch {
    return show(body);
  }
}

export function who(a: Received): string {
  return (
    `user ${JSON.stringify(a.impersonateUser)} groups ` +
    `${JSON.stringify(a.impersonateGroup)}` +
    `${a.impersonateOther.length ? ` (+${a.impersonateOther.join(',')})` : ''}, auth ${a.auth}` +
    `${a.authorization && a.auth !== 'token' ? ` with Authorization ${JSON.stringify(a.authorization)}` : ''}`
  );
}

function whoExpected(id: ExpectedIdentity): string {
  return (
    `user ${JSON.stringify(id.impersonateUser)} groups ${JSON.stringify(id.impersonateGroup)}, ` +
    `auth ${id.auth}` +
    `${id.authorization && id.auth !== 'token' ? ` with Authorization ${JSON.stringify(id.authorization)}` : ''}`
  );
}

function same(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
