// The differential framing harness: rounds of requests from two users at once, through one entry
// point of tower, judged by what reached the recording upstream (the member's side of the wire)
// and what each client read back.
import { readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import fc from 'fast-check';
import { parse } from 'yaml';
import {
  describeShape,
  encodeRequest,
  expectationOf,
  IMPERSONATED,
  roundArbitrary,
  type ConnectionScript,
} from './framing.ts';
import { ResponseReader, show, type Outcome } from './raw-http.ts';
import { isTowerStatus, judge, who, type ExpectedIdentity, type Sent, type Violation } from './framing-oracle.ts';
import type { RecorderEvent, RecordingUpstream } from './recording-upstream.ts';

export type { ExpectedIdentity, Violation };

/** per answer: nothing may hang */
export const READ_TIMEOUT_MS = 10_000;
/** after a dropped upstream connection, tower's pool must have seen it close before the next round writes on it */
const RESET_MS = 500;
/** the member has been idle this long: whatever tower was going to send has arrived */
const QUIET_MS = 250;
const QUIET_MAX_MS = 3_000;
const CONNECT_TIMEOUT_MS = 10_000;

export interface Client {
  name: string;
  /** a new connection to the entry point (TLS with the client's certificate, or plain) */
  connect(): Promise<Duplex>;
  /** header lines sent with every request */
  headers: string[];
  identity: ExpectedIdentity;
}

/** Where requests go in: the shared gateway for one cluster, a cluster's own port, its ks-apiserver port. */
export interface EntryPoint {
  name: string;
  /** the Host header clients send */
  host: string;
  /** /clusters/<name> on the shared gateway; empty on a cluster's own ports */
  prefix: string;
  cluster: string;
  /** two users */
  clients: Client[];
  /**
   * tower decides a client's own Impersonate-* (certificate ports); false: they pass on to the member (ks-apiserver
   * port)
   */
  judgesImpersonation: boolean;
}

/** A client certificate, its key and the CA that verifies the gateway, read from a `tower kubeconfig`. */
export function credentialsOf(kubeconfigPath: string): { server: URL; ca: string; cert: string; key: string } {
  return credentialsIn(readFileSync(kubeconfigPath, 'utf8'));
}

/** ... from its YAML */
export function credentialsIn(kubeconfig: string): { server: URL; ca: string; cert: string; key: string } {
  const doc = parse(kubeconfig) as {
    clusters: { cluster: { server: string; 'certificate-authority-data': string } }[];
    users: { user: { 'client-certificate-data': string; 'client-key-data': string } }[];
  };
  const b64 = (s: string) => Buffer.from(s, 'base64').toString('utf8');
  return {
    server: new URL(doc.clusters[0]!.cluster.server),
    ca: b64(doc.clusters[0]!.cluster['certificate-authority-data']),
    cert: b64(doc.users[0]!.user['client-certificate-data']),
    key: b64(doc.users[0]!.user['client-key-data']),
  };
}

/**
 * A connector for TLS with a client certificate. `anyName`: the server's certificate must still be
 * from `ca`, whatever names it carries (a cluster port's names its Service, not the loopback address).
 */
export function tlsConnector(
  host: string,
  port: number,
  creds: { ca: string; cert: string; key: string },
  anyName = false,
): () => Promise<Duplex> {
  const names = anyName ? { checkServerIdentity: () => undefined } : {};
  return () =>
    opened(
      tlsConnect({ host, port, ca: creds.ca, cert: creds.cert, key: creds.key, ALPNProtocols: ['http/1.1'], ...names }),
      'secureConnect',
    );
}

/** A connector for plain TCP. */
export function plainConnector(host: string, port: number): () => Promise<Duplex> {
  return () => opened(netConnect({ host, port }), 'connect');
}

function opened(socket: Duplex, event: string): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no connection within ${CONNECT_TIMEOUT_MS} ms`));
    }, CONNECT_TIMEOUT_MS);
    socket.once(event, () => {
      clearTimeout(t);
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
  });
}

export interface RoundResult {
  violations: Violation[];
  transcript: string;
  /** per request: forwarded, refused or unanswered (for the tally of what a run explored) */
  fates: ('forwarded' | 'refused' | 'unanswered')[];
}

let markers = 0;
let smuggled = 0;
/**
 * every marker sent so far: one that reaches the member after its round was judged is told apart from one never sent
 */
const issued = new Set<string>();
/** recorders whose last round broke a rule */
const desynced = new WeakSet<RecordingUpstream>();

/** Plays one round: every connection at once, then judges what the member and the clients saw. */
export async function playRound(
  entry: EntryPoint,
  recorder: RecordingUpstream,
  scripts: ConnectionScript[],
): Promise<RoundResult> {
  // a round that broke a rule may have left a channel out of step: the next one starts on fresh ones
  if (desynced.delete(recorder)) {
    recorder.dropConnections();
    await sleep(RESET_MS);
  }
  const from = recorder.events.length;
  const connections = scripts.map((script, i) => {
    const client = entry.clients[script.client]!;
    const sent = script.requests.map((shape): Sent => {
      const marker = `h-${++markers}`;
      issued.add(marker);
      const encoded = encodeRequest(shape, {
        marker,
        prefix: entry.prefix,
        cluster: entry.cluster,
        host: entry.host,
        headers: client.headers,
        smuggledId: () => `smuggled-${++smuggled}`,
      });
      const identity =
        shape.impersonate && !entry.judgesImpersonation
          ? { ...client.identity, impersonateUser: [IMPERSONATED.user], impersonateGroup: [IMPERSONATED.group] }
          : client.identity;
      const expected = expectationOf(shape, encoded.body, entry);
      return {
        client,
        identity,
        connection: i + 1,
        marker,
        shape,
        encoded,
        expected,
        outcome: { kind: 'unsent' },
        endedBy: undefined,
        closeAhead: false,
      };
    });
    if (script.pipelined)
      sent.forEach((s, j) => {
        s.closeAhead = sent.slice(j + 1).some((later) => later.expected.refusals.length > 0);
      });
    return { script, client, sent };
  });
  const violations: Violation[] = [];
  const played = await Promise.all(
    connections.map((c) =>
      play(c.client, c.script.pipelined, c.sent).catch((err: Error) => {
        violations.push({
          rule: 'cannot connect',
          text: `${c.client.name} could not connect to ${entry.name}: ${err.message}`,
        });
        return undefined;
      }),
    ),
  );
  await quiet(recorder);
  const events = recorder.events.slice(from);
  const sent = connections.flatMap((c) => c.sent);
  violations.push(...judge(sent, events, issued));
  played.forEach((p, i) => {
    // after an answer that closes the connection a client reads nothing more: what follows cannot reach it
    if (p && !p.done && p.reader.leftover.length > 0) {
      violations.push({
        rule: 'bytes after the last answer',
        text:
          `${connections[i]!.client.name}'s connection ${i + 1} got ` +
          `bytes after its last answer: ${show(p.reader.leftover)}`,
      });
    }
    p?.socket.destroy();
  });
  if (violations.length > 0) desynced.add(recorder);
  return { violations, transcript: transcript(entry, connections, events), fates: sent.map(fate) };
}

/** Sends a connection's requests (all in one write, or each after the previous answer) and reads their answers. */
async function play(
  client: Client,
  pipelined: boolean,
  sent: Sent[],
): Promise<{ socket: Duplex; reader: ResponseReader; done: boolean }> {
  const socket = await client.connect();
  socket.on('error', () => undefined);
  const reader = new ResponseReader(socket);
  if (pipelined) socket.write(Buffer.concat(sent.map((s) => s.encoded.bytes)));
  let endedBy: Sent['endedBy'];
  /**
   * `close`: the server said it closes (nothing after is an answer); `failure`: already reported, nothing more is
   * judged
   */
  let stop: 'close' | 'failure' | undefined;
  for (const s of sent) {
    s.endedBy = endedBy;
    if (stop === 'failure') {
      s.outcome = { kind: 'unsent' };
      continue;
    }
    if (stop === 'close' || (!pipelined && reader.ended)) {
      s.outcome = { kind: pipelined ? 'closed' : 'unsent' };
      continue;
    }
    if (!pipelined) socket.write(s.encoded.bytes);
    const o = (s.outcome = await reader.next(s.shape.method, READ_TIMEOUT_MS));
    if (o.kind === 'timeout' || o.kind === 'garbage') {
      endedBy = 'failure';
      stop = 'failure';
      continue;
    }
    if (o.kind === 'closed') {
      // a silent close is CONNECT's refusal, or one of a request pipelined after this one; an unexplained one is
      // reported once, not for every request after it
      const why = s.endedBy ?? (s.expected.silentClose || s.closeAhead ? 'refusal' : undefined);
      endedBy ??= why ?? 'failure';
      stop = why ? 'close' : 'failure';
      continue;
    }
    if (o.kind !== 'answer') continue;
    if (isTowerStatus(o.answer, s.shape.method)) endedBy ??= 'refusal';
    if (s.expected.ends) endedBy ??= s.expected.ends;
    if (s.shape.http10) endedBy ??= 'http10';
    if (/\bclose\b/i.test(o.answer.headers.connection ?? '')) {
      endedBy ??= 'close';
      stop = 'close';
    }
    // a client stops after an upgrade or an HTTP/1.0 answer without keep-alive: the server closes
    if (s.expected.ends && !pipelined) stop = 'close';
  }
  return { socket, reader, done: stop !== undefined };
}

function fate(s: Sent): RoundResult['fates'][number] {
  if (s.outcome.kind !== 'answer') return 'unanswered';
  return s.outcome.answer.headers['x-recorder-url'] !== undefined ? 'forwarded' : 'refused';
}

function transcript(
  entry: EntryPoint,
  connections: { script: ConnectionScript; client: Client; sent: Sent[] }[],
  events: RecorderEvent[],
): string {
  const lines = [`round through ${entry.name}:`];
  connections.forEach((c, i) => {
    lines.push(`  ${c.client.name}, connection ${i + 1}${c.script.pipelined ? ' (pipelined: all in one write)' : ''}:`);
    for (const s of c.sent) {
      lines.push(`    ${s.marker} ${describeShape(s.shape)} → ${outcomeText(s.outcome)}`);
      lines.push(`      sent ${show(s.encoded.bytes, 400)}`);
    }
  });
  lines.push('  the member saw:');
  for (const e of events) {
    if (e.kind === 'request')
      lines.push(
        `    [conn ${e.connection}] ${e.method} ${e.url} as ${who(e)}, ${e.framing}, ` +
          `body ${show(e.body, 80)}${e.complete ? '' : ' (cut off)'}${e.overlapped ? ' (pipelined)' : ''}`,
      );
    else if (e.kind === 'garbage') lines.push(`    [conn ${e.connection}] garbage ${e.code}: ${show(e.bytes, 80)}`);
    else lines.push(`    [conn ${e.connection}] SubjectAccessReview for ${e.user}`);
  }
  return lines.join('\n');
}

function outcomeText(o: Outcome): string {
  if (o.kind !== 'answer') return o.kind;
  const url = o.answer.headers['x-recorder-url'];
  return url !== undefined
    ? `${o.answer.status} from the member for ${url}`
    : `${o.answer.status} ${show(o.answer.body, 120)}`;
}

async function quiet(recorder: RecordingUpstream): Promise<void> {
  const deadline = Date.now() + QUIET_MAX_MS;
  while (Date.now() - recorder.lastActivity < QUIET_MS && Date.now() < deadline) await sleep(50);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface FramingRun {
  seed: number;
  numRuns: number;
  timeLimitMs: number;
}

/**
 * The property: for any rounds of requests, framed any way, from two users at once, the member
 * sees exactly the heads the clients sent, each as its sender, with the body its framing
 * describes, and each client gets its own answers. Throws (fast-check's report: seed, path, the
 * shrunk round, then this round's violations and transcript) when one does not hold.
 */
export async function checkFraming(
  entry: EntryPoint,
  recorder: RecordingUpstream,
  run: FramingRun,
): Promise<Record<RoundResult['fates'][number], number>> {
  const tally = { forwarded: 0, refused: 0, unanswered: 0 };
  // fast-check's time limit stops waiting for the round in flight, not the round: it is awaited here,
  // so that nothing of it reaches the member during the next property's rounds
  let inFlight: Promise<unknown> = Promise.resolve();
  try {
    await fc.assert(
      fc.asyncProperty(roundArbitrary, async (scripts) => {
        const round = playRound(entry, recorder, scripts);
        inFlight = round.catch(() => undefined);
        const r = await round;
        for (const f of r.fates) tally[f]++;
        if (r.violations.length > 0)
          throw new Error(
            `${r.violations.length} violation(s):\n` +
              `- ${r.violations.map((x) => x.text).join('\n- ')}\n\n${r.transcript}`,
          );
      }),
      { seed: run.seed, numRuns: run.numRuns, interruptAfterTimeLimit: run.timeLimitMs, markInterruptAsFailure: false },
    );
  } finally {
    await inFlight;
  }
  return tally;
}
