import assert from 'node:assert/strict';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import type { ServerChannel } from 'ssh2';
import { CHANNEL_TYPE, CHANNEL_TYPE_TLS, FEATURE_AUTH_AT_AGENT, FEATURE_TLS_AT_AGENT } from '../src/tunnel/protocol.ts';
import type { AgentSession } from '../src/tunnel/server.ts';
import { FakeProxy } from './support/fake-proxy.ts';
import { RecordingUpstream, type RecorderServer } from './support/recording-upstream.ts';
import { removeDir, tempDir, TowerProcess } from './support/tower.ts';

/*
 * The proxy is a stranger to the agent too (README, security model): whatever answers at its
 * address, or a framing bug in a real one. The agent takes one request at a time on a channel and
 * treats bytes ahead of the previous answer as an attack: it closes that channel, says so, and
 * forwards nothing more. Here a fake proxy built from tower's own agent port admits a real
 * `tower agent` and writes a second request into a channel before the first is answered; a
 * recording member shows what reached its side of the wire.
 */

/** the member holds the first answer (or 101) this long: the second request is written well before it */
const FIRST_ANSWER_DELAY_MS = 1_000;
/** the gap between the two writes of the "two writes" variants */
const SECOND_WRITE_DELAY_MS = 100;
/** how long the agent has to close a channel it must close (it can do so at once) */
const CHANNEL_CLOSE_WAIT_MS = 3_000;
/** how long the agent has to log it */
const LOG_WAIT_MS = 2_000;
/** after the verdict, time for late bytes to reach the member all the same */
const SETTLE_MS = 300;
/** a whole answer to a well-behaved request */
const ANSWER_WAIT_MS = 5_000;
const AGENT_TOKEN = 'f'.repeat(64);

let member: RecordingUpstream;
let proxy: FakeProxy;
let dir: string;
const agents: TowerProcess[] = [];
const sessions: Record<string, AgentSession> = {};
let probes = 0;

/** A real agent of the fake proxy, with `kubeconfig` for the member's kube-apiserver and the recording ks-apiserver. */
function startAgent(name: string, kubeconfig: string): TowerProcess {
  const p = new TowerProcess(`agent ${name}`, [
    'agent',
    '--name',
    name,
    '--token',
    AGENT_TOKEN,
    '--proxy-server',
    proxy.url,
    '--proxy-fingerprint',
    proxy.fingerprint,
    '--kubeconfig',
    kubeconfig,
    '--kubesphere-service',
    member.ksHostPort,
    '--max-retry-interval',
    '2s',
  ]);
  agents.push(p);
  return p;
}

before(async () => {
  dir = tempDir('hostile-proxy');
  // as a kube-apiserver (401 without the agent's credential), and an upgrade is switched, its connection kept: only the
  // agent closes a channel here
  member = await RecordingUpstream.start({ apiserver: true, switchUpgrades: true });
  proxy = await FakeProxy.start();
  // one agent that adds its bearer token to each request, one whose TLS carries its client certificate
  startAgent('token-agent', member.writeKubeconfig(join(dir, 'token.kubeconfig'), 'token'));
  startAgent('cert-agent', member.writeKubeconfig(join(dir, 'cert.kubeconfig'), 'cert'));
  sessions['token-agent'] = await proxy.session('token-agent');
  sessions['cert-agent'] = await proxy.session('cert-agent');
});

after(async () => {
  await Promise.all(agents.map((a) => a.stop('SIGKILL')));
  await proxy?.close();
  await member?.close();
  if (dir) removeDir(dir);
});

/** Where a channel leads: the member's kube-apiserver (TLS made by the agent) or its ks-apiserver (plain HTTP). */
interface Route {
  agent: string;
  server: RecorderServer;
  type: string;
}
const ROUTES: Record<string, Route> = {
  'kube-apiserver through the token agent (it adds its Authorization)': {
    agent: 'token-agent',
    server: 'kube-apiserver',
    type: CHANNEL_TYPE_TLS,
  },
  'kube-apiserver through the certificate agent (its TLS is its identity)': {
    agent: 'cert-agent',
    server: 'kube-apiserver',
    type: CHANNEL_TYPE_TLS,
  },
  'ks-apiserver through the token agent (plain HTTP)': {
    agent: 'token-agent',
    server: 'ks-apiserver',
    type: CHANNEL_TYPE,
  },
};

function hostPortOf(route: Route): string {
  const config = sessions[route.agent]!.config;
  return route.server === 'kube-apiserver' ? config.kubernetesSvcHost : config.kubesphereSvcHost;
}

/** A channel the fake proxy opened, with what came back and whether it closed. */
class Opened {
  readonly channel: ServerChannel;
  answer = '';
  closed = false;
  #closedNow: Promise<void>;

  constructor(channel: ServerChannel) {
    this.channel = channel;
    channel.on('error', () => undefined);
    // read: an ssh2 channel that nobody reads never closes
    channel.on('data', (d: Buffer) => {
      this.answer += d.toString('latin1');
    });
    this.#closedNow = new Promise((resolve) =>
      channel.once('close', () => {
        this.closed = true;
        resolve();
      }),
    );
  }

  static async open(route: Route): Promise<Opened> {
    return new Opened(await sessions[route.agent]!.openChannel(hostPortOf(route), route.type));
  }

  /** whether the agent closed the channel within `ms` */
  async closedWithin(ms: number): Promise<boolean> {
    await Promise.race([this.#closedNow, sleep(ms)]);
    return this.closed;
  }

  write(bytes: string): void {
    if (!this.closed) this.channel.write(Buffer.from(bytes, 'latin1'));
  }

  async waitForAnswer(marker: string): Promise<void> {
    const deadline = Date.now() + ANSWER_WAIT_MS;
    while (!this.answer.includes(marker)) {
      if (Date.now() > deadline)
        throw new Error(`no answer naming ${marker} within ${ANSWER_WAIT_MS} ms; got ${JSON.stringify(this.answer)}`);
      if (this.closed)
        throw new Error(`the channel closed before an answer naming ${marker}; got ${JSON.stringify(this.answer)}`);
      await sleep(20);
    }
  }

  close(): void {
    if (!this.closed) this.channel.close();
  }
}

/** a request head as the proxy would write it, with a probe that names it at the member */
function get(path: string, probe: string, extra: string[] = []): string {
  return [
    `GET ${path}${path.includes('?') ? '&' : '?'}probe=${probe} HTTP/1.1`,
    'Host: member',
    'User-Agent: hostile-proxy',
    ...extra,
    '',
    '',
  ].join('\r\n');
}

/** the request the hostile proxy slips in: what an attacker wants run with the agent's rights */
function smuggled(probe: string): string {
  const body = JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: probe } });
  return [
    `POST /api/v1/namespaces?probe=${probe} HTTP/1.1`,
    'Host: member',
    'Impersonate-User: mallory',
    'Impersonate-Group: system:masters',
    'Content-Type: application/json',
    `Content-Length: ${Buffer.byteLength(body)}`,
    '',
    body,
  ].join('\r\n');
}

/** How an attempt on one channel went, at the member's side and at the agent's. */
interface Verdict {
  /** probes other than the first that reached the member's parser, or whose bytes reached the member at all */
  secondReachedMember: string[];
  /** the agent closed the channel */
  channelClosed: boolean;
  /** the agent said so (matched loosely: /closed a channel/) */
  agentLogged: boolean;
}

/**
 * when the hostile proxy writes the second request: with the first, a moment after it, or once the
 * first answer's head has come back but before its body has
 */
type Timing = 'one write' | 'two writes' | 'while the answer streams';

/**
 * Writes `first`, then `second` before the first answer has ended, as `timing` says. Returns what
 * reached the member besides the first request, and what the agent did.
 */
async function attempt(
  route: Route,
  first: string,
  second: string,
  timing: Timing,
  secondProbe: string,
): Promise<Verdict> {
  const agent = agents.find((a) => a.name === `agent ${route.agent}`)!;
  const logFrom = agent.output.length;
  const wireFrom = member.wire.length;
  const eventsFrom = member.events.length;
  const ch = await Opened.open(route);
  try {
    if (timing === 'one write') {
      ch.write(first + second);
    } else if (timing === 'two writes') {
      ch.write(first);
      await sleep(SECOND_WRITE_DELAY_MS);
      ch.write(second);
    } else {
      ch.write(first);
      await ch.waitForAnswer('HTTP/1.1 200 ');
      ch.write(second);
    }
    const channelClosed = await ch.closedWithin(CHANNEL_CLOSE_WAIT_MS);
    const agentLogged = await agent.waitFor(/closed a channel/, LOG_WAIT_MS, logFrom).then(
      () => true,
      () => false,
    );
    await sleep(SETTLE_MS);
    const parsed = member
      .requests(eventsFrom)
      .filter((r) => r.url.includes(secondProbe))
      .map((r) => `${r.method} ${r.url} (read by the member's parser, auth: ${r.auth})`);
    const raw = member.received(route.server, wireFrom).includes(secondProbe) ? [`bytes naming ${secondProbe}`] : [];
    return { secondReachedMember: [...parsed, ...raw], channelClosed, agentLogged };
  } finally {
    ch.close();
  }
}

test(
  'both agents took the TLS and the authorization offered to them: ' +
    'the fake proxy holds no member credential, only channels',
  () => {
    for (const name of ['token-agent', 'cert-agent']) {
      const { config } = sessions[name]!;
      assert.deepEqual(
        config.features?.filter((f) => f === FEATURE_TLS_AT_AGENT || f === FEATURE_AUTH_AT_AGENT).sort(),
        [FEATURE_AUTH_AT_AGENT, FEATURE_TLS_AT_AGENT],
        name,
      );
      assert.equal(config.bearerToken, undefined, name);
      assert.equal(config.keyData, undefined, name);
    }
  },
);

/**
 * Two requests, each written after the previous answer: both reach the member, with the agent's credential, on a
 * channel that stays open.
 */
async function twoInTurn(route: Route): Promise<void> {
  const n = ++probes;
  const ch = await Opened.open(route);
  try {
    ch.write(get('/first', `turn-a-${n}`));
    await ch.waitForAnswer(`turn-a-${n}`);
    ch.write(get('/second', `turn-b-${n}`));
    await ch.waitForAnswer(`turn-b-${n}`);
    const seen = member.requests().filter((r) => r.url.includes(`turn-a-${n}`) || r.url.includes(`turn-b-${n}`));
    const auth = route.server === 'ks-apiserver' ? 'none' : route.agent === 'token-agent' ? 'token' : 'cert';
    assert.deepEqual(
      seen.map((r) => `${r.method} ${r.url} ${r.auth}`),
      [`GET /first?probe=turn-a-${n} ${auth}`, `GET /second?probe=turn-b-${n} ${auth}`],
    );
    assert.equal(ch.closed, false, 'a keep-alive channel stays open between requests');
  } finally {
    ch.close();
  }
}

const HOLD_LINE = `the agent forwards nothing of the second request, closes the channel and logs it`;

for (const [routeName, route] of Object.entries(ROUTES)) {
  describe(`a hostile proxy on a channel to the ${routeName}`, () => {
    test(
      'well-behaved: two requests in turn, each after the previous answer, ' +
        "both reach the member with the agent's credential",
      async () => {
        await twoInTurn(route);
      },
    );

    for (const writes of ['one write', 'two writes'] as const) {
      test(`a second request before the first answer (${writes}): ${HOLD_LINE}`, async () => {
        const n = ++probes;
        const verdict = await attempt(
          route,
          get(`/slow?ms=${FIRST_ANSWER_DELAY_MS}`, `first-${n}`),
          smuggled(`second-${n}`),
          writes,
          `second-${n}`,
        );
        assert.deepEqual(verdict, { secondReachedMember: [], channelClosed: true, agentLogged: true });
      });

      test(`bytes after an upgrade request, before its 101 (${writes}): ${HOLD_LINE}`, async () => {
        const n = ++probes;
        const upgrade = get(`/upgrade?ms=${FIRST_ANSWER_DELAY_MS}`, `first-${n}`, [
          'Connection: Upgrade',
          'Upgrade: x-hostile',
        ]);
        const verdict = await attempt(route, upgrade, smuggled(`second-${n}`), writes, `second-${n}`);
        assert.deepEqual(verdict, { secondReachedMember: [], channelClosed: true, agentLogged: true });
      });
    }

    test(
      `a second request after the first answer's head, ` + `before its body (while the answer streams): ${HOLD_LINE}`,
      async () => {
        const n = ++probes;
        const verdict = await attempt(
          route,
          get(`/streaming?body-ms=${FIRST_ANSWER_DELAY_MS}`, `first-${n}`),
          smuggled(`second-${n}`),
          'while the answer streams',
          `second-${n}`,
        );
        assert.deepEqual(verdict, { secondReachedMember: [], channelClosed: true, agentLogged: true });
      },
    );

    // Go ends a line at a bare LF; the agent once split only at CRLF and trimmed the LF off a value, so that a
    // request hidden after "X-A: b\n\r\n" (or in a trailer) reached the member with the agent's credential
    for (const [where, bytes] of [
      [
        'a header line',
        (n: number) => {
          // Go: a head ending at "b\n\r\n", a body of LENGTH bytes ("X-Pad: aaa…"), then the hidden POST;
          // the agent once read one head (X-Pad's value running into the POST's request line) and one body
          const length = 400;
          const body = JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: `second-${n}` } });
          return (
            `GET /first?probe=first-${n} HTTP/1.1\r\nHost: member\r\nContent-Length: ${length}\r\n` +
            `X-A: b\n\r\nX-Pad: ${'a'.repeat(length - 'X-Pad: '.length)}` +
            `POST /api/v1/namespaces?probe=second-${n} HTTP/1.1\r\nImpersonate-User: mallory\r\n` +
            `Impersonate-Group: system:masters\r\nContent-Length: ${length}\r\n\r\n${body.padEnd(length)}`
          );
        },
      ],
      [
        'a trailer',
        (n: number) =>
          `POST /first?probe=first-${n} HTTP/1.1\r\nHost: member\r\nTransfer-Encoding: chunked\r\n\r\n` +
          `5\r\nhello\r\n0\r\nX-T: a\n\n${smuggled(`second-${n}`).replace(/\r\n/g, '\n')}\r\n\r\n`,
      ],
    ] as const) {
      test(`a bare LF in ${where}, hiding a request: ${HOLD_LINE}`, async () => {
        const n = ++probes;
        const verdict = await attempt(route, bytes(n), '', 'one write', `second-${n}`);
        assert.deepEqual(verdict, { secondReachedMember: [], channelClosed: true, agentLogged: true });
      });
    }

    test(
      'afterwards the agent still serves the proxy: ' + 'only the offending channels were closed, not the session',
      async () => {
        assert.equal(sessions[route.agent]!.closed, false);
        await twoInTurn(route);
      },
    );
  });
}
