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
import { AuthorizationInjector } from '../src/agent/authorization.ts';
import { decodeConfig, ProtocolError } from '../src/tunnel/protocol.ts';
import { kubectl, Stack } from './support/stack.ts';
import { TestUpstream } from './support/upstream.ts';

/** One seed per run, printed, so that a failure can be replayed: TOWER_FUZZ_SEED=<seed> npm test -- test/fuzz.test.ts */
const seed = Number(process.env.TOWER_FUZZ_SEED ?? Date.now() % 2 ** 31);
console.log(`fuzz seed ${seed}`);
const settings = (numRuns: number, ms: number) => ({ seed, numRuns, interruptAfterTimeLimit: ms, markInterruptAsFailure: false });

const GO_KEYS = ['Version', 'Name', 'Token', 'KubernetesSvcHost', 'KubeSphereSvcHost', 'CAData', 'CertData', 'KeyData', 'BearerToken', 'TowerFeatures', 'name', 'TOKEN'];
const VISIBLE = /^[\x21-\x7e]+$/;

describe('the config payload, fuzzed', () => {
  test('any payload is either a config whose values are safe for headers and logs, or a ProtocolError', () => {
    const value = fc.oneof(fc.string({ unit: 'binary' }), fc.string(), fc.integer(), fc.constant(null), fc.array(fc.string()), fc.base64String(), fc.boolean());
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
    fc.assert(fc.property(payload, (p) => {
      let c;
      try {
        c = decodeConfig(p);
      } catch (err) {
        assert.ok(err instanceof ProtocolError, `a ${(err as Error).constructor.name} escaped: ${(err as Error).message}`);
        refused++;
        return;
      }
      accepted++;
      assert.match(c.name, VISIBLE);
      assert.match(c.token, VISIBLE);
      assert.match(c.kubernetesSvcHost, VISIBLE);
      if (c.bearerToken?.length) assert.match(c.bearerToken.toString('latin1').trim(), VISIBLE);
    }), settings(3000, 20_000));
    assert.ok(accepted > 0 && refused > 0, `both outcomes explored (accepted ${accepted}, refused ${refused})`);
  });
});

describe('the agent\'s Authorization injector, fuzzed', () => {
  const token = fc.string({ minLength: 1, maxLength: 16 }).map((s) => Buffer.from(s).toString('hex'));
  const body = fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b));
  const message = fc.record({
    method: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE'),
    path: fc.webPath().map((p) => p || '/'),
    auth: fc.option(fc.string({ minLength: 1, maxLength: 20 }).map((s) => s.replace(/[\r\n]/g, '')), { nil: undefined }),
    body,
    chunked: fc.boolean(),
    chunks: fc.array(fc.integer({ min: 1, max: 64 }), { maxLength: 5 }),
  });
  test('each request gains exactly one Authorization, the agent\'s, and bodies pass through unchanged, however the bytes are cut', () => {
    fc.assert(fc.property(token, fc.array(message, { minLength: 1, maxLength: 6 }), fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 20 }), (tok, messages, cuts) => {
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
          if (at < m.body.length) parts.push(Buffer.from(`${(m.body.length - at).toString(16)};ext=1\r\n`), m.body.subarray(at), Buffer.from('\r\n'));
          parts.push(Buffer.from('0\r\nX-Trailer: t\r\n\r\n'));
          framed = Buffer.concat(parts);
        } else {
          headers.push(`Content-Length: ${m.body.length}`);
          framed = m.body;
        }
        const kept = headers.filter((h) => !/^authorization:/i.test(h));
        wire.push(Buffer.from(headers.join('\r\n') + '\r\n\r\n'), framed);
        expected.push(Buffer.from(kept.join('\r\n') + `\r\nAuthorization: Bearer ${tok}\r\n\r\n`), framed);
      }
      const all = Buffer.concat(wire);
      const out: Buffer[] = [];
      // copies: a pushed slice of the input must stay what it was when pushed
      const inject = new AuthorizationInjector(`Bearer ${tok}`, (b) => out.push(Buffer.from(b)));
      let at = 0;
      for (let i = 0; at < all.length; i++) {
        const n = cuts[i % cuts.length]!;
        inject.feed(all.subarray(at, at + n));
        at += n;
      }
      assert.deepEqual(Buffer.concat(out), Buffer.concat(expected));
    }), settings(500, 20_000));
  });
});

describe('a running proxy, fuzzed at both ports', () => {
  let stack: Stack;
  let upstream: TestUpstream;
  let kc: string;

  before(async () => {
    upstream = await TestUpstream.start();
    stack = new Stack();
    await stack.startProxy();
    const { token } = await stack.token('healthy');
    await stack.startAgent('healthy', token, upstream.writeKubeconfig(join(stack.dataDir, 'u.kubeconfig'), 'token')).waitFor(/connected to proxy/);
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
      const done = () => { clearTimeout(t); s.destroy(); resolve(answer); };
      const t = setTimeout(done, ms);
      s.on('data', (d: Buffer) => { answer += d.toString('latin1'); });
      s.on('error', done);
      s.on('close', done);
      s.write(bytes);
    });
  }

  test('garbage and framing on the agent port: raw, inside a WebSocket, after an SSH identification', async () => {
    const garbage = fc.uint8Array({ minLength: 1, maxLength: 4096 }).map((b) => Buffer.from(b));
    await fc.assert(fc.asyncProperty(fc.constantFrom('raw', 'websocket', 'ssh'), fc.array(garbage, { minLength: 1, maxLength: 4 }), async (where, messages) => {
      if (where === 'raw') {
        const answer = await exchange(() => netConnect(stack.agentPort, '127.0.0.1'), Buffer.concat(messages), 300);
        assert.ok(answer === '' || answer.startsWith('HTTP/1.1 '), `not an HTTP answer: ${JSON.stringify(answer.slice(0, 80))}`);
        return;
      }
      const ws = new WebSocket(stack.proxyUrl, 'kubesphere-v1');
      ws.on('error', () => {});
      await once(ws, 'open');
      if (where === 'ssh') ws.send(Buffer.from('SSH-2.0-fuzz\r\n'));
      for (const m of messages) ws.send(m);
      await Promise.race([once(ws, 'close'), new Promise((r) => setTimeout(r, 300))]);
      ws.terminate();
    }), settings(80, 60_000));
    await stillServing();
  });

  test('request heads on the gateway, with a valid client certificate', async () => {
    const doc = parse(readFileSync(kc, 'utf8'));
    const user = doc.users[0].user;
    const tls = {
      ca: Buffer.from(doc.clusters[0].cluster['certificate-authority-data'], 'base64'),
      cert: Buffer.from(user['client-certificate-data'], 'base64'), key: Buffer.from(user['client-key-data'], 'base64'),
    };
    const token = fc.stringMatching(/^[!-~]{0,12}$/);
    const head = fc.record({
      method: fc.oneof(fc.constantFrom('GET', 'POST', 'DELETE', 'CONNECT', 'OPTIONS'), token),
      path: fc.oneof(fc.webPath().map((p) => `/clusters/healthy${p}`), fc.string({ unit: 'binary', maxLength: 60 }), fc.constantFrom('/clusters/%2e%2e%2fx/api', '/clusters//api', '*')),
      headers: fc.array(fc.tuple(fc.oneof(token, fc.constantFrom('Impersonate-User', 'Impersonate-Group', 'Authorization', 'X-Remote-User', 'Content-Length', 'Transfer-Encoding', 'Upgrade', 'Connection')), fc.string({ unit: 'binary', maxLength: 40 })), { maxLength: 6 }),
      version: fc.constantFrom('HTTP/1.1', 'HTTP/1.0', 'HTTP/9.9', ''),
    });
    await fc.assert(fc.asyncProperty(head, async (h) => {
      const text = `${h.method} ${h.path} ${h.version}\r\n${h.headers.map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`;
      const answer = await exchange(() => tlsConnect({ port: stack.gatewayPort, host: '127.0.0.1', servername: 'localhost', ...tls }), Buffer.from(text, 'latin1'), 500);
      assert.ok(answer === '' || answer.startsWith('HTTP/1.1 '), `not an HTTP answer: ${JSON.stringify(answer.slice(0, 80))}`);
    }), settings(150, 60_000));
    await stillServing();
  });
});
