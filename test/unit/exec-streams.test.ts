// What the agent's recorder reads of an exec session, whichever protocol carries it: the WebSocket channel
// protocols (frames split anywhere, messages in fragments, control frames between them, base64) and SPDY/3.1
// (header blocks in one zlib context per direction, data on streams named by their SYN_STREAM); and what it
// refuses to read (garbage, frames over its limits) without holding more than it may.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { constants, createDeflate } from 'node:zlib';
import { UnreadableStream, type ExecStream } from '../../src/agent/exec-streams.ts';
import { execRequest } from '../../src/agent/recording.ts';
import { SPDY_DICTIONARY, SpdyExecReader } from '../../src/agent/spdy.ts';
import { WebSocketExecReader } from '../../src/agent/ws-channels.ts';

/** A WebSocket frame; masked as a client sends it when `mask` is given. */
function wsFrame(opcode: number, payload: Buffer, fin = true, mask?: Buffer): Buffer {
  const len = payload.length;
  const head: number[] = [(fin ? 0x80 : 0) | opcode];
  const m = mask ? 0x80 : 0;
  if (len < 126) head.push(m | len);
  else if (len < 65536) head.push(m | 126, len >> 8, len & 0xff);
  else head.push(m | 127, 0, 0, 0, 0, (len >>> 24) & 0xff, (len >> 16) & 0xff, (len >> 8) & 0xff, len & 0xff);
  if (!mask) return Buffer.concat([Buffer.from(head), payload]);
  const body = Buffer.from(payload.map((b, i) => b ^ mask[i & 3]!));
  return Buffer.concat([Buffer.from(head), mask, body]);
}

/** the bytes cut at every place in turn, fed as separate reads; what each read delivers, joined per stream */
function everySplit(
  wire: Buffer,
  make: (data: (s: ExecStream, b: Buffer) => void) => (chunk: Buffer) => void,
): Map<string, string>[] {
  const results: Map<string, string>[] = [];
  for (let cut = 0; cut <= wire.length; cut++) {
    const seen = new Map<string, string>();
    const feed = make((s, b) => seen.set(s, (seen.get(s) ?? '') + b.toString('latin1')));
    feed(wire.subarray(0, cut));
    // and the rest a byte at a time
    for (let i = cut; i < wire.length; i++) feed(wire.subarray(i, i + 1));
    results.push(seen);
  }
  return results;
}

describe('WebSocket channel protocols', () => {
  const mask = Buffer.from([0x11, 0x22, 0x33, 0x44]);

  test('server messages by channel, fragmented, with a ping between fragments, split at every byte', () => {
    const wire = Buffer.concat([
      wsFrame(2, Buffer.from('\x01hello '), false),
      wsFrame(9, Buffer.from('ping')),
      wsFrame(0, Buffer.from('world\n'), true),
      wsFrame(2, Buffer.from('\x02oops\n')),
      wsFrame(2, Buffer.concat([Buffer.from([1]), Buffer.alloc(300, 0x61)])),
      wsFrame(2, Buffer.from('\x03{"status":"Success"}')),
      wsFrame(8, Buffer.from([0x03, 0xe8])),
    ]);
    for (const seen of everySplit(wire, (data) => {
      const r = new WebSocketExecReader('v5.channel.k8s.io', { data, failed: assert.fail });
      return (c) => r.fromServer(c);
    })) {
      assert.equal(seen.get('stdout'), 'hello world\n' + 'a'.repeat(300));
      assert.equal(seen.get('stderr'), 'oops\n');
      assert.equal(seen.get('error'), '{"status":"Success"}');
    }
  });

  test('client messages are unmasked on a copy; the bytes relayed stay masked', () => {
    const wire = Buffer.concat([
      wsFrame(2, Buffer.from('\x00typed'), true, mask),
      wsFrame(2, Buffer.from('\x04{"Width":100,"Height":30}'), true, mask),
      wsFrame(2, Buffer.from([255, 0]), true, mask),
    ]);
    const before = Buffer.from(wire);
    for (const seen of everySplit(wire, (data) => {
      const r = new WebSocketExecReader('v4.channel.k8s.io', { data, failed: assert.fail });
      return (c) => r.fromClient(c);
    })) {
      assert.equal(seen.get('stdin'), 'typed');
      assert.equal(seen.get('resize'), '{"Width":100,"Height":30}');
      assert.equal(seen.size, 2, 'the v5 close channel carries nothing recorded');
    }
    assert.deepEqual(wire, before);
  });

  test('a stream not wanted (stdin without --record-stdin) is skipped, the others still read', () => {
    const wire = Buffer.concat([
      wsFrame(2, Buffer.from('\x00secret password\n'), true, mask),
      wsFrame(2, Buffer.from('\x04{"Width":90,"Height":20}'), true, mask),
    ]);
    for (const seen of everySplit(wire, (data) => {
      const r = new WebSocketExecReader('v5.channel.k8s.io', { data, failed: assert.fail }, new Set(['resize']));
      return (c) => r.fromClient(c);
    })) {
      assert.deepEqual([...seen.keys()], ['resize']);
      assert.equal(seen.get('resize'), '{"Width":90,"Height":20}');
    }
  });

  test('base64 channels: the digit names the channel, the text decodes across fragments', () => {
    const b64 = Buffer.from('printed ✓ text\n').toString('base64');
    const wire = Buffer.concat([
      wsFrame(1, Buffer.from('1' + b64.slice(0, 5)), false),
      wsFrame(0, Buffer.from(b64.slice(5)), true),
    ]);
    for (const seen of everySplit(wire, (data) => {
      const r = new WebSocketExecReader('base64.channel.k8s.io', { data, failed: assert.fail });
      return (c) => r.fromServer(c);
    })) {
      assert.equal(Buffer.from(seen.get('stdout')!, 'latin1').toString('utf8'), 'printed ✓ text\n');
    }
  });

  test('what is not the protocol stops the reader: masked from the server, reserved bits, bad fragments', () => {
    const server = () => new WebSocketExecReader('v5.channel.k8s.io', { data: () => undefined, failed: assert.fail });
    assert.throws(() => server().fromServer(wsFrame(2, Buffer.from('\x01x'), true, mask)), UnreadableStream);
    assert.throws(() => server().fromServer(Buffer.from([0xc2, 0x01, 0x01])), UnreadableStream);
    assert.throws(() => server().fromServer(wsFrame(0, Buffer.from('x'))), UnreadableStream);
    assert.throws(() => server().fromServer(Buffer.from('HTTP/1.1 200 OK\r\n\r\n')), UnreadableStream);
    assert.throws(() => server().fromClient(wsFrame(2, Buffer.from('\x00x'))), UnreadableStream);
    // the kubelet reads each client frame as a message of its own: a continuation's first byte is a channel there
    assert.throws(
      () => server().fromClient(wsFrame(2, Buffer.from('\x04{"Width":80}'), false, mask)),
      UnreadableStream,
    );
    assert.throws(
      () => new WebSocketExecReader('v9.unknown', { data: () => undefined, failed: assert.fail }),
      UnreadableStream,
    );
  });

  test('a frame announcing 2^62 bytes is refused, not awaited', () => {
    const r = new WebSocketExecReader('v5.channel.k8s.io', { data: () => undefined, failed: assert.fail });
    assert.throws(() => r.fromServer(Buffer.from([0x82, 127, 0x40, 0, 0, 0, 0, 0, 0, 0])), UnreadableStream);
  });
});

/** SPDY/3 header blocks compressed as a client does: one zlib context, a sync flush after each block. */
async function compressor(): Promise<(headers: Record<string, string>) => Promise<Buffer>> {
  const deflate = createDeflate({ dictionary: SPDY_DICTIONARY });
  const out: Buffer[] = [];
  deflate.on('data', (d: Buffer) => out.push(d));
  return (headers) =>
    new Promise((resolve) => {
      const parts = [u32(Object.keys(headers).length)];
      for (const [k, v] of Object.entries(headers))
        parts.push(u32(k.length), Buffer.from(k), u32(v.length), Buffer.from(v));
      deflate.write(Buffer.concat(parts));
      deflate.flush(constants.Z_SYNC_FLUSH, () => resolve(Buffer.concat(out.splice(0))));
    });
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function control(type: number, body: Buffer, flags = 0): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(0x8003, 0);
  h.writeUInt16BE(type, 2);
  h.writeUInt32BE(body.length, 4);
  h[4] = flags;
  return Buffer.concat([h, body]);
}

function synStream(id: number, block: Buffer): Buffer {
  return control(1, Buffer.concat([u32(id), u32(0), Buffer.from([0, 0]), block]));
}

function data(id: number, payload: Buffer | string, flags = 0): Buffer {
  const p = Buffer.from(payload);
  const h = Buffer.alloc(8);
  h.writeUInt32BE(id, 0);
  h.writeUInt32BE(p.length, 4);
  h[4] = flags;
  return Buffer.concat([h, p]);
}

/** feeds a reader and waits (bounded) until its header blocks have inflated, on zlib's threads */
async function settle(reader: SpdyExecReader, feed: () => void): Promise<void> {
  feed();
  for (let i = 0; i < 2000 && reader.pending > 0; i++) await new Promise((r) => setTimeout(r, 1));
  await new Promise((r) => setImmediate(r));
}

describe('SPDY/3.1 as kubectl speaks it', () => {
  test('the dictionary is the one of SPDY/3 (its length and digest as moby/spdystream has it)', () => {
    assert.equal(SPDY_DICTIONARY.length, 1423);
    assert.equal(
      createHash('sha256').update(SPDY_DICTIONARY).digest('hex'),
      '51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02',
    );
  });

  test('streams named by SYN_STREAM carry stdout, stderr, error and stdin, split at every byte', async () => {
    const block = await compressor();
    const kinds = ['error', 'stdin', 'stdout', 'stderr', 'resize'];
    const syns: Buffer[] = [];
    for (const [i, kind] of kinds.entries())
      syns.push(synStream(1 + 2 * i, await block({ streamtype: kind, port: '' })));
    const opened = Buffer.concat(syns);
    const typed = Buffer.concat([
      control(6, u32(1)), // a PING between
      data(3, 'typed\n'),
      data(9, '{"Width":120,"Height":40}\n'),
    ]);
    const server = Buffer.concat([
      control(2, Buffer.concat([u32(1), Buffer.from([0x78, 0x9c, 1, 2, 3])])), // a SYN_REPLY: its context is not read
      data(5, 'out '),
      data(7, 'err\n'),
      data(5, 'put\n', 1),
      data(1, '{"metadata":{},"status":"Success"}'),
    ]);
    for (let cut = 0; cut <= opened.length; cut += 5) {
      const seen = new Map<string, string>();
      const r = new SpdyExecReader({
        data: (s, b) => seen.set(s, (seen.get(s) ?? '') + b.toString()),
        failed: (err) => assert.fail(err),
      });
      await settle(r, () => {
        r.fromClient(opened.subarray(0, cut));
        r.fromClient(opened.subarray(cut));
        // the member answers on streams it was sent, before their header blocks have inflated here
        for (let i = 0; i < server.length; i += 3) r.fromServer(server.subarray(i, i + 3));
        for (let i = 0; i < typed.length; i += 11) r.fromClient(typed.subarray(i, i + 11));
      });
      assert.equal(seen.get('stdout'), 'out put\n', `cut at ${cut}`);
      assert.equal(seen.get('stderr'), 'err\n');
      assert.equal(seen.get('error'), '{"metadata":{},"status":"Success"}');
      assert.equal(seen.get('stdin'), 'typed\n');
      assert.equal(seen.get('resize'), '{"Width":120,"Height":40}\n');
      r.close();
    }
  });

  test(
    'garbage, another version, a header frame over the limit ' + 'and a block zlib cannot read stop the reader',
    async () => {
      const quiet = () => new SpdyExecReader({ data: () => undefined, failed: () => undefined });
      assert.throws(() => quiet().fromClient(Buffer.from([0x80, 0x02, 0, 1, 0, 0, 0, 0])), UnreadableStream);
      assert.throws(() => quiet().fromClient(control(1, Buffer.alloc(70_000))), UnreadableStream);
      assert.throws(() => quiet().fromClient(control(1, Buffer.alloc(4))), UnreadableStream);
      let failed: Error | undefined;
      const r = new SpdyExecReader({ data: () => undefined, failed: (e) => (failed = e) });
      await settle(r, () => r.fromClient(synStream(1, Buffer.from('not zlib at all'))));
      assert.ok(failed instanceof UnreadableStream, String(failed));
      r.close();
    },
  );

  test('a header spdystream reads otherwise, or a stream id opened again, stops the reader', async () => {
    const cases: [string, (block: (h: Record<string, string>) => Promise<Buffer>) => Promise<Buffer>][] = [
      // spdystream splits at NUL and reads "stdout"
      ['a NUL in a value', async (block) => synStream(1, await block({ streamtype: 'stdout\0x' }))],
      ['a name in capitals', async (block) => synStream(1, await block({ StreamType: 'stdout' }))],
      [
        // spdystream resets the second SYN_STREAM 3: the stream stays stdout
        'a stream id opened again',
        async (block) =>
          Buffer.concat([
            synStream(1, await block({ streamtype: 'error' })),
            synStream(3, await block({ streamtype: 'stdout' })),
            synStream(3, await block({ streamtype: 'resize' })),
          ]),
      ],
      ['an even stream id from the client', async (block) => synStream(2, await block({ streamtype: 'stdout' }))],
    ];
    for (const [what, bytes] of cases) {
      let failed: Error | undefined;
      const r = new SpdyExecReader({ data: () => undefined, failed: (e) => (failed = e) });
      const wire = await bytes(await compressor());
      await settle(r, () => r.fromClient(wire));
      assert.ok(failed instanceof UnreadableStream, `${what}: ${String(failed)}`);
      r.close();
    }
  });

  test('data waiting for its stream to be named is bounded', () => {
    const r = new SpdyExecReader({ data: () => undefined, failed: () => undefined });
    // a header block that never completes inflating: data behind it would wait for ever
    r.fromClient(synStream(1, Buffer.from([0x78, 0xbb])));
    const big = data(2, Buffer.alloc(200_000));
    r.fromServer(big);
    assert.throws(() => r.fromServer(big), UnreadableStream);
    r.close();
  });
});

describe('which requests are exec or attach', () => {
  const exec = (target: string) => execRequest('POST', target);
  const field = (target: string, k: 'subresource' | 'pod' | 'container' | 'namespace') => {
    const e = exec(target);
    return e && !('unrecordable' in e) ? e[k] : e;
  };
  test('the pods subresources and the kubelet through nodes/proxy, however the path is spelled', () => {
    const e = exec('/api/v1/namespaces/ns/pods/web/exec?container=c&command=sh&command=-c&stdin=true&tty=1');
    assert.deepEqual(e, {
      subresource: 'exec',
      namespace: 'ns',
      pod: 'web',
      container: 'c',
      command: ['sh', '-c'],
      stdin: true,
      tty: true,
    });
    assert.equal(field('//api/v1/namespaces/ns/pods/web/%61ttach/', 'subresource'), 'attach');
    // the apiserver decodes the whole path before it routes it: "p%2Fexec" is pod p's exec
    assert.equal(field('/api/v1/namespaces/ns/pods/p%2Fexec?command=id', 'pod'), 'p');
    assert.equal(field('/api/v1/nodes/n1/proxy/exec/ns/web/c?command=id', 'container'), 'c');
    assert.equal(field('/api/v1/nodes/n1/proxy/exec%2Fns%2Fweb%2Fc', 'container'), 'c');
    assert.equal(field('/api/v1/proxy/nodes/n1/attach/ns/web/uid/c', 'container'), 'c');
    assert.equal(exec('/api/v1/namespaces/ns/pods/web/portforward'), undefined);
    assert.equal(exec('/api/v1/namespaces/ns/pods/web/log'), undefined);
    assert.equal(exec('/api/v1/nodes/n1/proxy/containerLogs/ns/web/c'), undefined);
  });

  test('stdin and tty as apimachinery reads booleans: anything but 0 or false', () => {
    const flags = (q: string) => {
      const e = exec(`/api/v1/namespaces/ns/pods/web/exec?${q}`);
      return e && !('unrecordable' in e) ? `${e.stdin} ${e.tty}` : e;
    };
    assert.equal(flags('stdin=yes&tty=True'), 'true true');
    assert.equal(flags('stdin=&tty'), 'true true');
    assert.equal(flags('stdin=False&tty=0'), 'false false');
    assert.equal(flags('command=id'), 'false false');
  });

  test('what may run a command and cannot be recorded, or cannot be read for certain, is said so', () => {
    for (const target of [
      '/api/v1/nodes/n1/proxy/run/default/p/c?cmd=id',
      '/api/v1/nodes/n1/proxy/cri/exec/abc',
      '/api/v1/nodes/n1/proxy/portForward/default/p',
      '/api/v1/nodes/n1/proxy/x/../exec/default/p/c',
      '/api/v1/nodes/n1/proxy/exec/default/p',
      '/api/v1/namespaces/ns/pods/web/exec?command=id;command=rm',
      '/api/v1/namespaces/ns/pods/web/%zz',
    ]) {
      const e = exec(target);
      assert.ok(e && 'unrecordable' in e, `${target}: ${JSON.stringify(e)}`);
    }
  });
});
