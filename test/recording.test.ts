// Exec sessions on record (`tower agent --record-exec DIR`): a user's `kubectl exec` through the tunnel to the
// stand-in apiserver (kubectl's WebSocket protocol, v5.channel.k8s.io) leaves an asciicast v2 file whose output
// events are what kubectl printed, with who ran what where in its header; what was typed only when asked. A
// recording that cannot start refuses the exec before the member sees it (fail-closed), or lets it go on
// (fail-open); a member that answers the upgrade with garbage ends the session and not the agent.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, test } from 'node:test';
import { goPeerBinary, startGoPeer } from './support/go-peer.ts';
import { kubectl, run, Stack } from './support/stack.ts';
import { freePort, type TowerProcess } from './support/tower.ts';
import { TestUpstream } from './support/upstream.ts';

let upstream: TestUpstream;
let stack: Stack;
let memberKubeconfig: string;

before(async () => {
  upstream = await TestUpstream.start();
  stack = new Stack();
  await stack.startProxy();
  memberKubeconfig = upstream.writeKubeconfig(join(stack.dataDir, 'upstream.kubeconfig'), 'cert');
});

after(async () => {
  await stack?.close();
  await upstream?.close();
});

/** a cluster whose agent records into `dir` with `extra` flags; jane's kubeconfig through the gateway */
async function recordedCluster(
  name: string,
  dir: string,
  extra: string[] = [],
): Promise<{ agent: TowerProcess; jane: string }> {
  const { token } = await stack.token(name);
  const agent = stack.startAgent(name, token, memberKubeconfig, [
    '--record-exec',
    dir,
    '--log-format',
    'json',
    ...extra,
  ]);
  await agent.waitFor(/connected to proxy/);
  const jane = await stack.kubeconfig(name, ['--user', 'jane', '--group', 'viewers']);
  return { agent, jane };
}

interface Cast {
  header: {
    version: number;
    width: number;
    height: number;
    command: string;
    tower: {
      cluster: string;
      user: string | null;
      groups: string[];
      namespace: string;
      pod: string;
      command: string[];
      stdin: boolean;
      stdinRecorded: boolean;
      auditId: string | null;
      protocol: string | null;
      answer: number | null;
      started: string;
      ended: string | null;
      exit: { code: number | null; status: string } | null;
      stopped?: string;
    };
  };
  events: [number, string, string][];
}

function readCast(file: string): Cast {
  const [first, ...rest] = readFileSync(file, 'utf8').split('\n');
  return {
    header: JSON.parse(first!),
    events: rest.filter((l) => l !== '').map((l) => JSON.parse(l)),
  };
}

/** what a player shows: every output event's text, in order */
const replayed = (cast: Cast) =>
  cast.events
    .filter((e) => e[1] === 'o')
    .map((e) => e[2])
    .join('');

/**
 * What `asciinema cat FILE` prints: a player's reading of the file. It reads /dev/tty, so it runs in a pseudo-terminal
 * (python's pty) with its stdout to a file, which nothing in between translates.
 */
async function asciinemaCat(cast: string): Promise<string> {
  const out = `${cast}.played`;
  const script = [
    'import os, pty, sys',
    'out = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)',
    'pid, fd = pty.fork()',
    'if pid == 0:',
    '    os.dup2(out, 1)',
    '    os.execvp("asciinema", ["asciinema", "cat", sys.argv[1]])',
    'while True:',
    '    try:',
    '        if not os.read(fd, 4096):',
    '            break',
    '    except OSError:',
    '        break',
    '_, status = os.waitpid(pid, 0)',
    'sys.exit(os.waitstatus_to_exitcode(status))',
  ].join('\n');
  const r = await run('python3', ['-c', script, cast, out], { timeoutMs: 30_000 });
  assert.equal(r.code, 0, `asciinema cat ${cast}: ${r.stdout}${r.stderr}`);
  const printed = readFileSync(out, 'utf8');
  rmSync(out);
  return printed;
}

/** the file the agent logged for the next session it recorded after `from` */
async function recordedFile(agent: TowerProcess, from: number): Promise<string> {
  const m = await agent.waitFor(/"msg":"exec session recorded".*?"file":"([^"]+)"/, 20_000, from);
  return m[1]!;
}

test(
  "a user's kubectl exec is on record: the cast replays to what kubectl printed; " + 'who, what, where in its header',
  async () => {
    const dir = join(stack.dataDir, 'recordings');
    const { agent, jane } = await recordedCluster('rec', dir);
    const typed = 'recorded through the tunnel ✓\nand a second line, ünïcödé\n';
    const mark = agent.output.length;
    const r = await kubectl(jane, ['exec', '-i', 'echo', '--', 'cat'], typed);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, typed);
    const file = await recordedFile(agent, mark);
    const cast = readCast(file);
    assert.equal(replayed(cast), r.stdout);
    // and as asciinema, the player the file is for, prints it (Debian's asciinema; .ci/run installs it)
    assert.equal(await asciinemaCat(file), r.stdout);
    assert.equal(cast.header.version, 2);
    assert.deepEqual(
      cast.events.filter((e) => e[1] === 'i'),
      [],
      'what was typed is not recorded without --record-stdin',
    );
    const t = cast.header.tower;
    assert.equal(t.cluster, 'rec');
    assert.equal(t.user, 'jane');
    assert.ok(t.groups.includes('viewers'), t.groups.join(','));
    assert.deepEqual(
      [t.namespace, t.pod, t.command, t.stdin, t.stdinRecorded],
      ['default', 'echo', ['cat'], true, false],
    );
    assert.equal(t.protocol, 'v5.channel.k8s.io');
    assert.equal(t.answer, 101);
    assert.deepEqual(t.exit, { code: 0, status: 'Success' });
    assert.ok(t.ended && t.ended >= t.started, `${t.started} .. ${t.ended}`);
    // the Audit-ID the proxy set (a proxy that sets one) is the one the member received, and names the file
    const received = upstream.upgrades.at(-1)!;
    assert.match(received.target, /^\/api\/v1\/namespaces\/default\/pods\/echo\/exec\?/);
    const auditId = received.headers['audit-id'];
    assert.equal(t.auditId, typeof auditId === 'string' ? auditId : null);
    const id = t.auditId ?? '[0-9a-f]{16}';
    assert.match(file.slice(dir.length + 1), new RegExp(`^\\d{8}T\\d{6}\\.\\d{3}Z-${id}\\.cast$`));
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(statSync(dir).mode & 0o077, 0, "the directory is the agent's alone");

    const mark2 = agent.output.length;
    const failed = await kubectl(jane, ['exec', '-i', 'echo', '--', 'exit', '3'], 'x');
    assert.equal(failed.code, 3, failed.stderr);
    const second = readCast(await recordedFile(agent, mark2));
    assert.equal(replayed(second), failed.stdout);
    assert.equal(second.header.tower.exit?.code, 3);
  },
);

test('--record-stdin: what was typed is on record too, as input events', async () => {
  const { agent, jane } = await recordedCluster('rec-stdin', join(stack.dataDir, 'recordings-stdin'), [
    '--record-stdin',
  ]);
  const mark = agent.output.length;
  const typed = 'typed by jane\n';
  const r = await kubectl(jane, ['exec', '-i', 'echo', '--', 'cat'], typed);
  assert.equal(r.code, 0, r.stderr);
  const cast = readCast(await recordedFile(agent, mark));
  assert.equal(
    cast.events
      .filter((e) => e[1] === 'i')
      .map((e) => e[2])
      .join(''),
    typed,
  );
  assert.equal(replayed(cast), r.stdout);
  assert.equal(cast.header.tower.stdinRecorded, true);
});

test('fail-closed: with nowhere to record, the exec is refused by the agent and never reaches the member', async () => {
  const blocker = join(stack.dataDir, 'not-a-directory');
  writeFileSync(blocker, 'a file where the directory would be\n');
  const { agent, jane } = await recordedCluster('rec-closed', join(blocker, 'recordings'));
  await agent.waitFor(/the directory of recordings cannot be used/);
  const before = upstream.upgrades.length;
  const r = await kubectl(jane, ['exec', '-i', 'echo', '--', 'cat'], 'never seen\n');
  assert.notEqual(r.code, 0);
  assert.match(
    r.stderr,
    /exec and attach sessions are recorded here \(--record-exec\), and this exec's recording cannot start/,
  );
  assert.match(r.stderr, /nothing was sent to the kube-apiserver/);
  assert.equal(upstream.upgrades.length, before, 'the member received no exec');
  await agent.waitFor(/refused an exec: its recording cannot start/);
  // everything else goes on
  const get = await kubectl(jane, ['get', '--raw', '/api']);
  assert.equal(get.code, 0, get.stderr);
});

test(
  'fail-closed: once the recordings hold --record-max-bytes, execs are refused; ' + 'none is deleted to make room',
  async () => {
    const dir = join(stack.dataDir, 'recordings-full');
    mkdirSync(dir, { mode: 0o700 });
    const old = join(dir, '20260101T000000.000Z-old.cast');
    writeFileSync(old, 'x'.repeat(10_000));
    const { agent, jane } = await recordedCluster('rec-full', dir, ['--record-max-bytes', '8Ki', '--health-port', '0']);
    const port = Number((await agent.waitFor(/"msg":"health and metrics serving".*?"address":"[^"]*:(\d+)"/))[1]);
    const before = upstream.upgrades.length;
    const r = await kubectl(jane, ['exec', '-i', 'echo', '--', 'cat'], 'never seen\n');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /hold 10000 bytes, its limit \(--record-max-bytes\) is 8192/);
    assert.equal(upstream.upgrades.length, before);
    assert.deepEqual(readdirSync(dir), ['20260101T000000.000Z-old.cast']);
    const metrics = (await (await fetch(`http://127.0.0.1:${port}/metrics`)).text())
      .split('\n')
      .filter((l) => l.startsWith('tower_agent_recordings'))
      .join('\n');
    // kubectl asks twice: over WebSocket, then over SPDY when that is refused; each refusal is logged and counted
    const refused = agent.output.match(/refused an exec: its recording cannot start/g)?.length ?? 0;
    assert.ok(refused >= 1);
    assert.match(metrics, new RegExp(`^tower_agent_recordings_total\\{result="refused"\\} ${refused}$`, 'm'));
    assert.match(metrics, /^tower_agent_recordings_bytes 10000$/m);
  },
);

test('fail-closed: a session whose recording reaches --record-max-bytes midway is ended there', async () => {
  const dir = join(stack.dataDir, 'recordings-midway');
  // room for the header line (about 4.5 KiB) and a little output, not for 64 KiB of it
  const { agent, jane } = await recordedCluster('rec-midway', dir, ['--record-max-bytes', '16Ki']);
  const mark = agent.output.length;
  const typed = 'y'.repeat(64 * 1024) + '\n';
  const r = await kubectl(jane, ['exec', '-i', 'echo', '--', 'cat'], typed);
  assert.notEqual(r.code, 0, 'the session was ended');
  assert.ok(r.stdout.length < 64 * 1024, `kubectl printed ${r.stdout.length} bytes`);
  await agent.waitFor(/ended an exec session: its recording failed.*reached their limit/, 20_000, mark);
  const m = await agent.waitFor(/"msg":"exec recording incomplete".*?"file":"([^"]+)"/, 20_000, mark);
  const cast = readCast(m[1]!);
  assert.match(cast.header.tower.stopped ?? '', /--record-max-bytes 16384/);
  // what it holds is the session's output up to there, at most (the first output event may alone be over the
  // budget); kubectl may have been cut off before or after that point
  assert.ok(typed.startsWith(replayed(cast)));
  assert.ok(typed.startsWith(r.stdout));
  assert.ok(statSync(m[1]!).size <= 16 * 1024);
});

test('fail-open: with nowhere to record, the exec goes on unrecorded and the agent says so', async () => {
  const blocker = join(stack.dataDir, 'not-a-directory-either');
  writeFileSync(blocker, '');
  const { agent, jane } = await recordedCluster('rec-open', join(blocker, 'recordings'), ['--record-failure', 'open']);
  const r = await kubectl(jane, ['exec', '-i', 'echo', '--', 'cat'], 'unrecorded\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'unrecorded\n');
  await agent.waitFor(/exec goes on unrecorded \(--record-failure open\): its recording cannot start/);
});

test('a member that answers the upgrade with garbage: the session is ended, the agent goes on', async () => {
  const dir = join(stack.dataDir, 'recordings-garbage');
  const { agent, jane } = await recordedCluster('rec-garbage', dir);
  const mark = agent.output.length;
  upstream.execGarbage = Buffer.from('\x82\x05\x01hi\r\nthis is not a frame stream \xff\xfe at all');
  try {
    const r = await kubectl(jane, ['exec', '-i', 'echo', '--', 'cat'], 'x\n');
    assert.notEqual(r.code, 0);
  } finally {
    upstream.execGarbage = undefined;
  }
  await agent.waitFor(/ended an exec session: its recording failed/, 20_000, mark);
  const m = await agent.waitFor(/"msg":"exec recording incomplete".*?"file":"([^"]+)"/, 20_000, mark);
  const cast = readCast(m[1]!);
  assert.match(cast.header.tower.stopped ?? '', /WebSocket/);
  assert.ok(agent.running);
  const again = await kubectl(jane, ['exec', '-i', 'echo', '--', 'cat'], 'after\n');
  assert.equal(again.code, 0, again.stderr);
  assert.equal(again.stdout, 'after\n');
});

test(
  'with a proxy that does not take TLS at the agent (a Go tower proxy), a recording agent refuses its ' +
    'kube-apiserver channels: no exec, nor anything else, passes unread',
  async () => {
    const listen = await freePort();
    const forward = await freePort();
    const token = 'go-proxy-token';
    const proxy = startGoPeer(await goPeerBinary(), [
      'proxy',
      '-listen',
      `127.0.0.1:${listen}`,
      '-forward',
      `127.0.0.1:${forward}`,
      '-name',
      'alpha',
      '-token',
      token,
    ]);
    try {
      const fingerprint = (await proxy.waitFor(/^serving .* fingerprint=(SHA256:\S+)$/m))[1]!;
      const agent = stack.startAgent('alpha', token, memberKubeconfig, [
        '--proxy-server',
        `http://127.0.0.1:${listen}`,
        '--proxy-fingerprint',
        fingerprint,
        '--record-exec',
        join(stack.dataDir, 'recordings-go'),
      ]);
      await agent.waitFor(/connected to proxy/);
      const before = { requests: upstream.requests.length, upgrades: upstream.upgrades.length };
      // the Go proxy forwards raw TCP: a client's own TLS would go end to end, where the agent cannot read it
      const outcome = await new Promise<string>((resolve) => {
        const socket = tlsConnect({ host: '127.0.0.1', port: forward, rejectUnauthorized: false });
        socket.once('secureConnect', () => {
          socket.destroy();
          resolve('a TLS session with the member');
        });
        socket.once('error', (err) => resolve(`refused: ${err.message}`));
        socket.once('close', () => resolve('refused: closed'));
      });
      assert.match(outcome, /^refused/);
      await agent.waitFor(/refusing channels to the kube-apiserver that the agent cannot read/);
      assert.deepEqual({ requests: upstream.requests.length, upgrades: upstream.upgrades.length }, before);
    } finally {
      await proxy.stop('SIGKILL');
    }
  },
);
