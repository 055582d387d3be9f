// The requests of the framing harness: how a client may frame one (every way HTTP/1.1 allows, and
// the ways it does not), the bytes that makes, what tower must do with it, and the arbitraries
// that make rounds of them.
import fc from 'fast-check';

/**
 * How a request's body is framed. `none` sends no body (the bytes after a bare head are the next
 * request); the chunked family differs in how Transfer-Encoding is spelt.
 */
export const FRAMINGS = [
  'none',
  'length',
  'chunked',
  /** `Transfer-Encoding: Chunked` (codings are case-insensitive) */
  'chunked-cased',
  /** `Transfer-Encoding:<TAB>chunked` (optional whitespace may be a tab) */
  'chunked-tab',
  /** Content-Length and Transfer-Encoding: chunked both */
  'length+chunked',
  'identity,chunked',
  /** chunked not last: the body's end is unknowable, RFC 9112 says 400 */
  'chunked,identity',
  'gzip,chunked',
  /** two Transfer-Encoding: chunked lines: chunked applied twice */
  'chunked-twice',
  /** `Transfer-Encoding : chunked`: not a header name at all */
  'chunked-space-colon',
  /** two Content-Length lines that disagree */
  'length-twice',
] as const;
export type Framing = (typeof FRAMINGS)[number];

/** the methods clients use, and odd ones: WebDAV's that Node knows, one nobody knows, CONNECT */
export const METHODS = ['GET', 'HEAD', 'DELETE', 'OPTIONS', 'POST', 'PUT', 'PATCH'] as const;
export const ODD_METHODS = ['TRACE', 'PROPFIND', 'PURGE', 'LINK', 'BREW', 'CONNECT'] as const;

/**
 * A request hidden in a body, asking for system:masters: to the member's own paths, to the gateway's,
 * or as a request one replica forwards to another (X-Tower-Peer-*, trusted on a replica's connection).
 */
export interface Smuggled {
  method: 'GET' | 'POST' | 'DELETE';
  to: 'member' | 'gateway' | 'replica';
  withBody: boolean;
}
export type Payload =
  { kind: 'empty' } | { kind: 'bytes'; bytes: Uint8Array } | { kind: 'requests'; requests: Smuggled[] };

/** One request as a client shapes it; the harness gives it its marker. */
export interface RequestShape {
  method: string;
  http10: boolean;
  /** HTTP/1.0 only: Connection: keep-alive */
  keepAlive: boolean;
  framing: Framing;
  payload: Payload;
  chunkSizes: number[];
  chunkExtension: boolean;
  /** a trailer field Impersonate-Group: system:masters after the last chunk */
  identityTrailer: boolean;
  expectContinue: boolean;
  /** `bare`: Upgrade without Connection: upgrade (an ordinary request); `full`: a real upgrade request */
  upgrade: 'none' | 'bare' | 'full';
  /** the client asks, by Impersonate-*, to act as system:masters: the member allows no one that */
  impersonate: boolean;
}

export interface ConnectionScript {
  /** index of the client (user) that opens it */
  client: number;
  /** all requests in one write, else one at a time, each after the previous answer */
  pipelined: boolean;
  requests: RequestShape[];
}

/** What the harness needs to make a request's bytes: its marker and where it goes. */
export interface RequestContext {
  marker: string;
  /** path prefix of the entry point: /clusters/<name> on the shared gateway, empty on a cluster's own port */
  prefix: string;
  cluster: string;
  host: string;
  /** header lines the client sends on every request (its own Authorization on the ks-apiserver port) */
  headers: string[];
  /** a fresh id for each smuggled request */
  smuggledId: () => string;
}

export interface Encoded {
  bytes: Buffer;
  /** the body as the client's framing describes it: what the member must get if the request reaches it */
  body: Buffer;
}

const CRLF = '\r\n';
const SMUGGLED_BODY = '{"kind":"ClusterRoleBinding"}';
const WEBSOCKET_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

export function requestPath(prefix: string, marker: string): string {
  return `${prefix}/api/v1/namespaces/${marker}`;
}

export const IMPERSONATED = { user: 'admin', group: 'system:masters' } as const;
/** IMPERSONATED as a replica forwards an identity (X-Tower-Peer-Identity) */
const IMPERSONATED_PEER_IDENTITY = Buffer.from(
  JSON.stringify({ user: IMPERSONATED.user, groups: [IMPERSONATED.group] }),
).toString('base64');

/** The bytes a client sends for `shape`. */
export function encodeRequest(shape: RequestShape, ctx: RequestContext): Encoded {
  const body = payloadBytes(shape.payload, ctx);
  const lines = [
    `${shape.method} ${requestPath(ctx.prefix, ctx.marker)} HTTP/${shape.http10 ? '1.0' : '1.1'}`,
    `Host: ${ctx.host}`,
    'User-Agent: tower-framing-test',
    ...ctx.headers,
  ];
  if (shape.impersonate)
    lines.push(`Impersonate-User: ${IMPERSONATED.user}`, `Impersonate-Group: ${IMPERSONATED.group}`);
  if (shape.expectContinue) lines.push('Expect: 100-continue');
  if (shape.upgrade !== 'none')
    lines.push('Upgrade: websocket', 'Sec-WebSocket-Version: 13', `Sec-WebSocket-Key: ${WEBSOCKET_KEY}`);
  if (shape.upgrade === 'full') lines.push('Connection: Upgrade');
  if (shape.http10 && shape.keepAlive) lines.push('Connection: keep-alive');
  const chunked = chunk(body, shape);
  let sent: Buffer;
  switch (shape.framing) {
    case 'none':
      sent = Buffer.alloc(0);
      break;
    case 'length':
      lines.push(`Content-Length: ${body.length}`);
      sent = body;
      break;
    case 'length-twice':
      lines.push(`Content-Length: ${body.length}`, `Content-Length: ${body.length + 1}`);
      sent = body;
      break;
    case 'chunked':
      lines.push('Transfer-Encoding: chunked');
      sent = chunked;
      break;
    case 'chunked-cased':
      lines.push('Transfer-Encoding: Chunked');
      sent = chunked;
      break;
    case 'chunked-tab':
      lines.push('Transfer-Encoding:\tchunked');
      sent = chunked;
      break;
    case 'length+chunked':
      lines.push(`Content-Length: ${body.length}`, 'Transfer-Encoding: chunked');
      sent = chunked;
      break;
    case 'identity,chunked':
      lines.push('Transfer-Encoding: identity, chunked');
      sent = chunked;
      break;
    case 'chunked,identity':
      lines.push('Transfer-Encoding: chunked, identity');
      sent = chunked;
      break;
    case 'gzip,chunked':
      lines.push('Transfer-Encoding: gzip, chunked');
      sent = chunked;
      break;
    case 'chunked-twice':
      lines.push('Transfer-Encoding: chunked', 'Transfer-Encoding: chunked');
      sent = chunked;
      break;
    case 'chunked-space-colon':
      lines.push('Transfer-Encoding : chunked');
      sent = chunked;
      break;
  }
  return {
    bytes: Buffer.concat([Buffer.from(lines.join(CRLF) + CRLF + CRLF, 'latin1'), sent]),
    body: shape.framing === 'none' ? Buffer.alloc(0) : body,
  };
}

function payloadBytes(p: Payload, ctx: RequestContext): Buffer {
  if (p.kind === 'empty') return Buffer.alloc(0);
  if (p.kind === 'bytes') return Buffer.from(p.bytes);
  return Buffer.from(
    p.requests
      .map((s) => {
        const path = `${s.to === 'gateway' ? ctx.prefix : ''}/${ctx.smuggledId()}`;
        const peer =
          s.to === 'replica'
            ? [
                `X-Tower-Peer-Cluster: ${ctx.cluster}`,
                'X-Tower-Peer-Target: kubernetes',
                `X-Tower-Peer-Identity: ${IMPERSONATED_PEER_IDENTITY}`,
              ]
            : [];
        const head = [
          `${s.method} ${path} HTTP/1.1`,
          'Host: kubernetes',
          ...peer,
          `Impersonate-User: ${IMPERSONATED.user}`,
          `Impersonate-Group: ${IMPERSONATED.group}`,
          `Content-Length: ${s.withBody ? SMUGGLED_BODY.length : 0}`,
        ];
        return head.join(CRLF) + CRLF + CRLF + (s.withBody ? SMUGGLED_BODY : '');
      })
      .join(''),
    'latin1',
  );
}

function chunk(body: Buffer, shape: RequestShape): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (let i = 0; at < body.length; i++) {
    const n = Math.min(
      shape.chunkSizes.length ? shape.chunkSizes[i % shape.chunkSizes.length]! : body.length,
      body.length - at,
    );
    parts.push(
      Buffer.from(`${n.toString(16)}${shape.chunkExtension ? ';ext=1' : ''}${CRLF}`),
      body.subarray(at, at + n),
      Buffer.from(CRLF),
    );
    at += n;
  }
  parts.push(Buffer.from(`0${CRLF}${shape.identityTrailer ? `Impersonate-Group: system:masters${CRLF}` : ''}${CRLF}`));
  return Buffer.concat(parts);
}

/** What tower may do with a request: forward it (with exactly this body) or refuse it with one of these codes. */
export interface Expectation {
  forwardable: boolean;
  /** statuses of a tower Status that may answer it instead; empty: it must reach the member */
  refusals: number[];
  /** why it may (or must) be refused, for messages */
  why: string[];
  body: Buffer;
  /** the connection carries no request after this one's answer */
  ends: 'http10' | 'upgrade' | undefined;
  /** tower may close the connection without a word (CONNECT, which nothing here serves) */
  silentClose: boolean;
}

const CHUNKED_LAST = new Set<Framing>([
  'chunked',
  'chunked-cased',
  'chunked-tab',
  'length+chunked',
  'identity,chunked',
  'gzip,chunked',
]);

/**
 * The oracle's rules. The unambiguous framings (Content-Length, chunked, none) of ordinary methods
 * must reach the member with exactly their body; ambiguous ones may be refused (400, or 501 for a
 * coding tower does not implement) and, if forwarded, carry the body chunked decoding gives; framings
 * with no single reading must be refused. Nothing here is judged by what tower does today.
 */
export function expectationOf(shape: RequestShape, body: Buffer, entry: { judgesImpersonation: boolean }): Expectation {
  const refusals = new Set<number>();
  const why: string[] = [];
  let forwardable = true;
  const may = (codes: number[], reason: string) => {
    for (const c of codes) refusals.add(c);
    why.push(reason);
  };
  const must = (codes: number[], reason: string) => {
    forwardable = false;
    may(codes, reason);
  };
  switch (shape.framing) {
    case 'chunked-cased':
      may([400], 'Transfer-Encoding spelt "Chunked"');
      break;
    case 'length+chunked':
      may([400], 'both Content-Length and Transfer-Encoding');
      break;
    case 'identity,chunked':
      may([400, 501], 'Transfer-Encoding identity, chunked');
      break;
    case 'gzip,chunked':
      may([400, 501], 'a transfer coding tower does not implement (gzip)');
      break;
    case 'chunked,identity':
      must([400, 501], 'Transfer-Encoding does not end in chunked');
      break;
    case 'chunked-twice':
      must([400], 'chunked applied twice');
      break;
    case 'chunked-space-colon':
      must([400], 'whitespace before a header colon');
      break;
    case 'length-twice':
      must([400], 'two Content-Lengths that disagree');
      break;
    default:
      break;
  }
  if (shape.http10 && CHUNKED_LAST.has(shape.framing)) may([400], 'Transfer-Encoding in HTTP/1.0');
  if (shape.expectContinue) may([417], 'Expect: 100-continue');
  if (shape.upgrade === 'bare') may([400], 'Upgrade without Connection: upgrade');
  if (shape.upgrade === 'full' && shape.framing !== 'none') may([400], 'a body on an upgrade request');
  // where tower acts as a certificate it asks the member first; the ks-apiserver port passes a client's headers on for
  // ks-apiserver to judge
  if (shape.impersonate && entry.judgesImpersonation) must([403], 'the member lets no one impersonate system:masters');
  if ((ODD_METHODS as readonly string[]).includes(shape.method)) may([405], `method ${shape.method}`);
  if (shape.method === 'BREW') must([400, 405, 501], 'a method HTTP does not know');
  if (shape.method === 'CONNECT') must([400, 405, 501], 'CONNECT, which the gateway does not serve');
  return {
    forwardable,
    refusals: [...refusals],
    why,
    body,
    ends: shape.upgrade === 'full' ? 'upgrade' : shape.http10 && !shape.keepAlive ? 'http10' : undefined,
    silentClose: shape.method === 'CONNECT',
  };
}

/** The request's method and framing, with what else it asks: `GET chunked +expect`. */
export function shapeTag(s: RequestShape): string {
  const flags = [
    s.http10 ? `HTTP/1.0${s.keepAlive ? ' keep-alive' : ''}` : '',
    s.expectContinue ? '+expect' : '',
    s.upgrade !== 'none' ? `+upgrade(${s.upgrade})` : '',
    s.impersonate ? '+impersonate' : '',
    s.identityTrailer && CHUNKED_LAST.has(s.framing) ? '+identity trailer' : '',
  ].filter(Boolean);
  return `${s.method} ${s.framing}${flags.length ? ' ' + flags.join(' ') : ''}`;
}

/** ... and its body: `GET chunked +expect, body: 2 smuggled request(s)`. */
export function describeShape(s: RequestShape): string {
  const p = s.payload;
  const body =
    p.kind === 'empty'
      ? 'empty'
      : p.kind === 'bytes'
        ? `${p.bytes.length} bytes`
        : `${p.requests.length} smuggled request(s)`;
  return `${shapeTag(s)}, body: ${s.framing === 'none' ? 'none' : body}`;
}

// --- arbitraries -----------------------------------------------------------------------------

const smuggled: fc.Arbitrary<Smuggled> = fc.record({
  method: fc.constantFrom('GET', 'POST', 'DELETE'),
  to: fc.constantFrom('member', 'gateway', 'replica'),
  withBody: fc.boolean(),
});
const payload: fc.Arbitrary<Payload> = fc.oneof(
  { weight: 1, arbitrary: fc.constant({ kind: 'empty' as const }) },
  {
    weight: 2,
    arbitrary: fc.uint8Array({ minLength: 1, maxLength: 48 }).map((bytes) => ({ kind: 'bytes' as const, bytes })),
  },
  {
    weight: 5,
    arbitrary: fc
      .array(smuggled, { minLength: 1, maxLength: 2 })
      .map((requests) => ({ kind: 'requests' as const, requests })),
  },
);
/** chunked on a bodyless method is the issue's smuggle: the chunked family is weighted up */
const framing: fc.Arbitrary<Framing> = fc.oneof(
  { weight: 3, arbitrary: fc.constant('none' as const) },
  { weight: 4, arbitrary: fc.constant('length' as const) },
  { weight: 6, arbitrary: fc.constant('chunked' as const) },
  { weight: 6, arbitrary: fc.constantFrom(...FRAMINGS.filter((f) => !['none', 'length', 'chunked'].includes(f))) },
);
const method = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(...METHODS) },
  { weight: 1, arbitrary: fc.constantFrom(...ODD_METHODS) },
);

export const requestShape: fc.Arbitrary<RequestShape> = fc
  .record({
    method,
    http10: fc.oneof({ weight: 7, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    keepAlive: fc.boolean(),
    framing,
    payload,
    chunkSizes: fc.array(fc.integer({ min: 1, max: 24 }), { maxLength: 3 }),
    chunkExtension: fc.boolean(),
    identityTrailer: fc.oneof(
      { weight: 5, arbitrary: fc.constant(false) },
      { weight: 1, arbitrary: fc.constant(true) },
    ),
    expectContinue: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    upgrade: fc.oneof(
      { weight: 8, arbitrary: fc.constant('none' as const) },
      { weight: 1, arbitrary: fc.constant('bare' as const) },
      { weight: 1, arbitrary: fc.constant('full' as const) },
    ),
    impersonate: fc.oneof({ weight: 9, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    // HTTP/1.0 has no upgrade: the two are not combined
  })
  .map((s) => (s.http10 ? { ...s, upgrade: 'none' as const } : s));

const connection = (client: number): fc.Arbitrary<ConnectionScript> =>
  fc.record({
    client: fc.constant(client),
    pipelined: fc.boolean(),
    requests: fc.array(requestShape, { minLength: 1, maxLength: 4 }),
  });

/** One round: two users at once, each on one or two keep-alive connections of their own. */
export const roundArbitrary: fc.Arbitrary<ConnectionScript[]> = fc
  .tuple(
    fc.array(connection(0), { minLength: 1, maxLength: 2 }),
    fc.array(connection(1), { minLength: 1, maxLength: 2 }),
  )
  .map(([a, b]) => [...a, ...b]);
