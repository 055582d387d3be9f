import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import WebSocket from 'ws';
import { parse } from 'yaml';
import { ExchangeViolation, HttpExchange } from '../src/agent/exchange.ts';
import { ProtocolError } from '../src/errors.ts';
import { decodeConfig } from '../src/tunnel/protocol.ts';
import { kubectl, Stack } from './support/stack.ts';
import { TestUpstream } from './support/upstream.ts';

/**
 * One seed per run, printed, so that a failure can be replayed: TOWER_FUZZ_SEED=<seed> npm test -- test/fuzz.test.ts
 */
const seed = Number(process.env.TOWER_FUZZ_SEED ?? Date.now() % 2 ** 31);
console.log(`fuzz seed ${seed}`);
const settings = (numRuns: number, ms: number) => ({
  seed,
  numRuns,
  interruptAfterTimeLimit: ms,
  markInterruptAsFailure: false,
});

const GO_KEYS = [
  'Version',
  'Name',
  'Token',
  'KubernetesSvcHost',
  'KubeSphereSvcHost',
  'CAData',
  'CertData',
  'KeyData',
  'BearerToken',
  'TowerFeatures',
  'name',
  'TOKEN',
];
const VISIBLE = /^[\x21-\x7e]+$/;

describe('the config payload, fuzzed', () => {
  test('any payload is either a config whose values are safe for headers and logs, or a ProtocolError', () => {
    const value = fc.oneof(
      fc.string({ unit: 'binary' }),
      fc.string(),
      fc.integer(),
      fc.constant(null),
      fc.array(fc.string()),
      fc.base64String(),
      fc.boolean(),
    );
    const valid = { Version: 'v1', Name: 'alpha', Token: 'a'.repeat(64), KubernetesSvcHost: '10.0.0.1:443' };
    let accepted = 0;
    let refused = 0;
    const payload = fc.oneof(
      // one field of a valid config replaced: the checks of each field in turn
      fc.tuple(fc.constantFrom(...GO_KEYS), value).map(([k, v]) => Buffer.from(JSON.stringify({ ...valid, [k]: v }))),
      fc.dictionary(fc.constantFrom(...GO_KEYS), value).map((o) => Buffer.from(JSON.stringify(o))),
      fc.uint8Array({ maxLength: 512 }).map((b) => Buffer.from(b)),
      fc.json().map((j) => Buffer.from(j)),
    );
    fc.assert(
      fc.property(payload, (p) => {
        let c;
        try {
          c = decodeConfig(p);
        } catch (err) {
          assert.ok(
            err instanceof ProtocolError,
            `a ${(err as Error).constructor.name} escaped: ${(err as Error).message}`,
          );
          refused++;
          return;
        }
        accepted++;
        assert.match(c.name, VISIBLE);
        assert.match(c.token, VISIBLE);
        assert.match(c.kubernetesSvcHost, VISIBLE);
        if (c.bearerToken?.length) assert.match(c.bearerToken.toString('latin1').trim(), VISIBLE);
      }),
      settings(3000, 20_000),
    );
    assert.ok(accepted > 0 && refused > 0, `both outcomes explored (accepted ${accepted}, refused ${refused})`);
  });
});

describe("the agent's HTTP exchange: requests, fuzzed", () => {
  const token = fc.string({ minLength: 1, maxLength: 16 }).map((s) => Buffer.from(s).toString('hex'));
  const body = fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b));
  const message = fc.record({
    method: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE'),
    path: fc.webPath().map((p) => p || '/'),
    auth: fc.option(
      fc.string({ minLength: 1, maxLength: 20 }).map((s) => s.replace(/[\r\n]/g, '')),
      { nil: undefined },
    ),
    body,
    chunked: fc.boolean(),
    chunks: fc.array(fc.integer({ min: 1, max: 64 }), { maxLength: 5 }),
  });
  test(
    "each request gains exactly one Authorization, the agent's, " +
      'and bodies pass through unchanged, however the bytes are cut',
    () => {
      fc.assert(
        fc.property(
          token,
          fc.array(message, { minLength: 1, maxLength: 6 }),
          fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 20 }),
          (tok, messages, cuts) => {
            const wire: Buffer[] = [];
            const expected: Buffer[] = [];
            for (const m of messages) {
              const headers = [`${m.method} ${m.path} HTTP/1.1`, 'Host: kubernetes'];
              if (m.auth !== undefined) headers.push(`authorization: ${m.auth}`);
              let framed: Buffer;
              if (m.chunked) {
                headers.push('Transfer-Encoding: chunked');
                const parts: Buffer[] = [];
                let at = 0;
                for (const n of m.chunks) {
                  const piece = m.body.subarray(at, at + n);
                  if (piece.length === 0) break;
                  parts.push(Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n'));
                  at += piece.length;
                }
                if (at < m.body.length)
                  parts.push(
                    Buffer.from(`${(m.body.length - at).toString(16)};ext=1\r\n`),
                    m.body.subarray(at),
                    Buffer.from('\r\n'),
                  );
                parts.push(Buffer.from('0\r\nX-Trailer: t\r\n\r\n'));
                framed = Buffer.concat(parts);
              } else {
                headers.push(`Content-Length: ${m.body.length}`);
                framed = m.body;
              }
              const kept = headers.filter((h) => !/^authorization:/i.test(h));
              wire.push(Buffer.concat([Buffer.from(headers.join('\r\n') + '\r\n\r\n'), framed]));
              expected.push(Buffer.from(kept.join('\r\n') + `\r\nAuthorization: Bearer ${tok}\r\n\r\n`), framed);
            }
            const out: Buffer[] = [];
            const answers: Buffer[] = [];
            // copies: a pushed slice of the input must stay what it was when pushed
            const exchange = new HttpExchange({
              authorization: `Bearer ${tok}`,
              toMember: (b) => out.push(Buffer.from(b)),
              toProxy: (b) => answers.push(Buffer.from(b)),
            });
            // one request at a time: each is answered before the next is sent, as the proxy's HTTP client does
            let c = 0;
            for (const request of wire) {
              for (let at = 0; at < request.length; c++) {
                const n = cuts[c % cuts.length]!;
                exchange.fromProxy(request.subarray(at, at + n));
                at += n;
              }
              exchange.fromMember(ANSWER);
            }
            assert.deepEqual(Buffer.concat(out), Buffer.concat(expected));
            assert.deepEqual(Buffer.concat(answers), Buffer.concat(wire.map(() => ANSWER)));
          },
        ),
        settings(500, 20_000),
      );
    },
  );

  test(
    'a byte of a next request before the previous answer ' + 'has ended is a violation, and nothing of it is forwarded',
    () => {
      fc.assert(
        fc.property(
          fc.array(message, { minLength: 2, maxLength: 4 }),
          fc.integer({ min: 1, max: 97 }),
          fc.nat({ max: ANSWER.length - 1 }),
          (messages, cut, answered) => {
            const bytes = messages.map((m) =>
              Buffer.concat([
                Buffer.from(
                  `${m.method} ${m.path} HTTP/1.1\r\nHost: member\r\nContent-Length: ${m.body.length}\r\n\r\n`,
                ),
                m.body,
              ]),
            );
            const toMember: Buffer[] = [];
            const exchange = new HttpExchange({
              toMember: (b) => toMember.push(Buffer.from(b)),
              toProxy: () => undefined,
            });
            const feed = (b: Buffer) => {
              for (let at = 0; at < b.length; at += cut) exchange.fromProxy(b.subarray(at, at + cut));
            };
            feed(bytes[0]!);
            // the first answer has begun, or not, but has not ended
            if (answered > 0) exchange.fromMember(ANSWER.subarray(0, answered));
            assert.throws(() => feed(Buffer.concat(bytes.slice(1))), ExchangeViolation);
            assert.deepEqual(
              Buffer.concat(toMember),
              bytes[0],
              'the first request reached the member, and not one byte more',
            );
          },
        ),
        settings(500, 20_000),
      );
    },
  );
});

describe("the agent's HTTP exchange: answers, fuzzed", () => {
  const answer = fc.record({
    head: fc.boolean(),
    interim: fc.constantFrom('', 'HTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n'),
    code: fc.constantFrom(200, 201, 204, 304, 403, 500),
    body: fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
    chunked: fc.boolean(),
    chunks: fc.array(fc.integer({ min: 1, max: 64 }), { maxLength: 5 }),
  });
  /** an answer as a member frames it, with what its request's method and its code allow */
  const frame = (a: {
    head: boolean;
    interim: string;
    code: number;
    body: Buffer;
    chunked: boolean;
    chunks: number[];
  }) => {
    const bodiless = a.head || a.code === 204 || a.code === 304;
    const body = bodiless ? Buffer.alloc(0) : a.body;
    if (!a.chunked)
      return Buffer.concat([
        Buffer.from(
          `${a.interim}HTTP/1.1 ${a.code} X\r\nContent-Length: ${a.head ? a.body.length : body.length}\r\n\r\n`,
        ),
        body,
      ]);
    const parts: Buffer[] = [Buffer.from(`${a.interim}HTTP/1.1 ${a.code} X\r\nTransfer-Encoding: chunked\r\n\r\n`)];
    if (!bodiless) {
      let at = 0;
      for (const n of a.chunks) {
        const piece = body.subarray(at, at + n);
        if (piece.length === 0) break;
        parts.push(Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n'));
        at += piece.length;
      }
      if (at < body.length)
        parts.push(Buffer.from(`${(body.length - at).toString(16)};ext=1\r\n`), body.subarray(at), Buffer.from('\r\n'));
      parts.push(Buffer.from('0\r\nX-Trailer: t\r\n\r\n'));
    }
    return Buffer.concat(parts);
  };

  test(
    'answers of every framing pass through unchanged however cut, ' +
      'and each ends where the member framed it: the next request is then taken',
    () => {
      fc.assert(
        fc.property(
          fc.array(answer, { minLength: 1, maxLength: 5 }),
          fc.integer({ min: 1, max: 97 }),
          (answers, cut) => {
            const toProxy: Buffer[] = [];
            const toMember: Buffer[] = [];
            const exchange = new HttpExchange({
              toMember: (b) => toMember.push(Buffer.from(b)),
              toProxy: (b) => toProxy.push(Buffer.from(b)),
            });
            const sent: Buffer[] = [];
            for (const [i, a] of answers.entries()) {
              const request = Buffer.from(`${a.head ? 'HEAD' : 'GET'} /r${i} HTTP/1.1\r\nHost: m\r\n\r\n`);
              exchange.fromProxy(request);
              const bytes = frame(a);
              for (let at = 0; at < bytes.length; at += cut) exchange.fromMember(bytes.subarray(at, at + cut));
              sent.push(bytes);
            }
            assert.deepEqual(Buffer.concat(toProxy), Buffer.concat(sent));
            assert.equal(exchange.requests, answers.length);
          },
        ),
        settings(500, 20_000),
      );
    },
  );

  test(
    "a byte past an answer's end, before a request, is a violation: " + "the member answers no one else's request",
    () => {
      fc.assert(
        fc.property(answer, fc.uint8Array({ minLength: 1, maxLength: 40 }), (a, extra) => {
          const exchange = new HttpExchange({ toMember: () => undefined, toProxy: () => undefined });
          exchange.fromProxy(Buffer.from(`${a.head ? 'HEAD' : 'GET'} / HTTP/1.1\r\nHost: m\r\n\r\n`));
          assert.throws(() => exchange.fromMember(Buffer.concat([frame(a), Buffer.from(extra)])), ExchangeViolation);
        }),
        settings(300, 10_000),
      );
    },
  );

  test('framing two readers could read two ways is a violation, both ways', () => {
    const request = (headers: string) => () =>
      new HttpExchange({ toMember: () => undefined, toProxy: () => undefined }).fromProxy(
        Buffer.from(`POST / HTTP/1.1\r\nHost: m\r\n${headers}\r\n`),
      );
    for (const h of [
      'Content-Length: 3\r\nTransfer-Encoding: chunked\r\n',
      'Transfer-Encoding: identity, chunked\r\n',
      'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n',
      'Content-Length: 3\r\nContent-Length: 4\r\n',
      'Content-Length: +3\r\n',
      'X-A: b\r\n folded\r\n',
      'X-A : b\r\n',
      'Connection: upgrade\r\nUpgrade: x\r\nContent-Length: 1\r\n',
    ])
      assert.throws(request(h), ExchangeViolation, h);
    const answered = (head: string) => () => {
      const e = new HttpExchange({ toMember: () => undefined, toProxy: () => undefined });
      e.fromProxy(Buffer.from('GET / HTTP/1.1\r\nHost: m\r\n\r\n'));
      e.fromMember(Buffer.from(head));
    };
    for (const h of [
      'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n',
      'HTTP/1.1 101 Switching Protocols\r\n\r\n',
      'HTTP/2 200\r\n\r\n',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
    ])
      assert.throws(answered(h), ExchangeViolation, h);
  });

  test('after an upgrade is switched, both ways carry any bytes; a refused upgrade ends its channel', () => {
    const toMember: Buffer[] = [];
    const toProxy: Buffer[] = [];
    const e = new HttpExchange({
      toMember: (b) => toMember.push(Buffer.from(b)),
      toProxy: (b) => toProxy.push(Buffer.from(b)),
    });
    const upgrade = 'GET /exec HTTP/1.1\r\nHost: m\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n';
    e.fromProxy(Buffer.from(upgrade));
    assert.throws(
      () =>
        new HttpExchange({ toMember: () => undefined, toProxy: () => undefined }).fromProxy(Buffer.from(upgrade + 'x')),
      ExchangeViolation,
      'nothing before the 101',
    );
    e.fromMember(Buffer.from('HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\n\r\n\x00\x01'));
    e.fromProxy(Buffer.from('GET /anything HTTP/1.1\r\n\r\n'));
    assert.ok(e.tunnel);
    assert.equal(Buffer.concat(toMember).toString('latin1'), upgrade + 'GET /anything HTTP/1.1\r\n\r\n');
    assert.match(Buffer.concat(toProxy).toString('latin1'), /\x00\x01$/);
    let done = false;
    const refused = new HttpExchange({
      toMember: () => undefined,
      toProxy: () => undefined,
      onDone: () => {
        done = true;
      },
    });
    refused.fromProxy(Buffer.from(upgrade));
    refused.fromMember(Buffer.from('HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno'));
    assert.ok(done, 'the channel of a refused upgrade ends');
  });
});

/** a whole answer, as the member sends it */
const ANSWER = Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');

describe('a running proxy, fuzzed at both ports', () => {
  let stack: Stack;
  let upstream: TestUpstream;
  let kc: string;

  before(async () => {
    upstream = await TestUpstream.start();
    stack = new Stack();
    await stack.startProxy();
    const { token } = await stack.token('healthy');
    await stack
      .startAgent('healthy', token, upstream.writeKubeconfig(join(stack.dataDir, 'u.kubeconfig'), 'token'))
      .waitFor(/connected to proxy/);
    kc = await stack.kubeconfig('healthy');
  });

  after(async () => {
    await stack?.close();
    await upstream?.close();
  });

  async function stillServing() {
    assert.ok(stack.proxy!.running, 'the proxy exited');
    const r = await kubectl(kc, ['get', '--raw', '/api']);
    assert.equal(r.code, 0, r.stderr);
  }

  /** Sends `bytes`, collects the answer until the peer closes or `ms` pass, then closes. */
  function exchange(open: () => import('node:net').Socket, bytes: Buffer, ms = 1000): Promise<string> {
    return new Promise((resolve) => {
      const s = open();
      let answer = '';
      const done = () => {
        clearTimeout(t);
        s.destroy();
        resolve(answer);
      };
      const t = setTimeout(done, ms);
      s.on('data', (d: Buffer) => {
        answer += d.toString('latin1');
      });
      s.on('error', done);
      s.on('close', done);
      s.write(bytes);
    });
  }

  test('garbage and framing on the agent port: raw, inside a WebSocket, after an SSH identification', async () => {
    const garbage = fc.uint8Array({ minLength: 1, maxLength: 4096 }).map((b) => Buffer.from(b));
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('raw', 'websocket', 'ssh'),
        fc.array(garbage, { minLength: 1, maxLength: 4 }),
        async (where, messages) => {
          if (where === 'raw') {
            const answer = await exchange(() => netConnect(stack.agentPort, '127.0.0.1'), Buffer.concat(messages), 300);
            assert.ok(
              answer === '' || answer.startsWith('HTTP/1.1 '),
              `not an HTTP answer: ${JSON.stringify(answer.slice(0, 80))}`,
            );
            return;
          }
          const ws = new WebSocket(stack.proxyUrl, 'kubesphere-v1');
          ws.on('error', () => {});
          await once(ws, 'open');
          if (where === 'ssh') ws.send(Buffer.from('SSH-2.0-fuzz\r\n'));
          for (const m of messages) ws.send(m);
          await Promise.race([once(ws, 'close'), new Promise((r) => setTimeout(r, 300))]);
          ws.terminate();
        },
      ),
      settings(80, 60_000),
    );
    await stillServing();
  });

  test('request heads on the gateway, with a valid client certificate', async () => {
    const doc = parse(readFileSync(kc, 'utf8'));
    const user = doc.users[0].user;
    const tls = {
      ca: Buffer.from(doc.clusters[0].cluster['certificate-authority-data'], 'base64'),
      cert: Buffer.from(user['client-certificate-data'], 'base64'),
      key: Buffer.from(user['client-key-data'], 'base64'),
    };
    const token = fc.stringMatching(/^[!-~]{0,12}$/);
    const head = fc.record({
      method: fc.oneof(fc.constantFrom('GET', 'POST', 'DELETE', 'CONNECT', 'OPTIONS'), token),
      path: fc.oneof(
        fc.webPath().map((p) => `/clusters/healthy${p}`),
        fc.string({ unit: 'binary', maxLength: 60 }),
        fc.constantFrom('/clusters/%2e%2e%2fx/api', '/clusters//api', '*'),
      ),
      headers: fc.array(
        fc.tuple(
          fc.oneof(
            token,
            fc.constantFrom(
              'Impersonate-User',
              'Impersonate-Group',
              'Authorization',
              'X-Remote-User',
              'Content-Length',
              'Transfer-Encoding',
              'Upgrade',
              'Connection',
            ),
          ),
          fc.string({ unit: 'binary', maxLength: 40 }),
        ),
        { maxLength: 6 },
      ),
      version: fc.constantFrom('HTTP/1.1', 'HTTP/1.0', 'HTTP/9.9', ''),
    });
    await fc.assert(
      fc.asyncProperty(head, async (h) => {
        const text =
          `${h.method} ${h.path} ${h.version}\r\n` + `${h.headers.map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`;
        const answer = await exchange(
          () => tlsConnect({ port: stack.gatewayPort, host: '127.0.0.1', servername: 'localhost', ...tls }),
          Buffer.from(text, 'latin1'),
          500,
        );
        assert.ok(
          answer === '' || answer.startsWith('HTTP/1.1 '),
          `not an HTTP answer: ${JSON.stringify(answer.slice(0, 80))}`,
        );
      }),
      settings(150, 60_000),
    );
    await stillServing();
  });
});
