import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import ssh2 from 'ssh2';
import { WebSocketServer } from 'ws';
import { WebSocketStream } from '../src/tunnel/ws-stream.ts';
import { generateHostKey, hostKeyFingerprint } from '../src/tunnel/ssh.ts';
import { pattern } from './support/pattern.ts';
import { kubectl, Stack } from './support/stack.ts';
import { TowerProcess, TOWER } from './support/tower.ts';
import { TestUpstream } from './support/upstream.ts';

/**
 * Whatever answers at the proxy's address: a WebSocket + SSH server with a key of its own that
 * records every connection and every `config` an agent sends it, then refuses it.
 */
class RecordingProxy {
  readonly hostKey = generateHostKey();
  readonly fingerprint = hostKeyFingerprint(this.hostKey);
  connections = 0;
  readonly configs: Record<string, unknown>[] = [];
  /** what it answers every config with; undefined: accepts it */
  refusal: string | undefined = 'Unauthorized agent';
  /** lines it writes on a control channel once it accepted a config */
  control: (string | Buffer)[] = [];
  #server: Server;
  port = 0;

  constructor(offer: string[], serverId?: string) {
    const ssh = new ssh2.Server({ hostKeys: [this.hostKey], ident: 'SSH-kubesphere-v1-server' }, (conn) => {
      conn.on('error', () => {});
      conn.on('authentication', (ctx) => ctx.accept());
      conn.on('ready', () => undefined);
      (
        conn as unknown as {
          on(
            e: string,
            l: (name: string, data: Buffer, want: boolean, reply: (ok: boolean, d?: Buffer) => void) => void,
          ): void;
        }
      ).on('global request', (name, data, _want, reply) => {
        if (name === 'config') this.configs.push(JSON.parse(data.toString()));
        if (name !== 'config' || this.refusal !== undefined) {
          reply(name === 'ping', Buffer.from(this.refusal ?? ''));
          return;
        }
        reply(true);
        (
          conn as unknown as {
            openChannel(
              t: string,
              d: Buffer,
              cb: (
                err: Error | undefined,
                ch: { write(b: string | Buffer): void; on(e: string, l: () => void): void; resume(): void },
              ) => void,
            ): void;
          }
        ).openChannel('tower-control@v1', Buffer.alloc(0), (err, ch) => {
          if (err) return;
          ch.on('error', () => undefined);
          ch.resume();
          for (const line of this.control) ch.write(line);
        });
      });
    });
    const wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      handleProtocols: () => 'kubesphere-v1',
    });
    if (offer.length) wss.on('headers', (h) => h.push(`x-tower-features: ${offer.join(',')}`));
    if (serverId !== undefined) wss.on('headers', (h) => h.push(`x-tower-server-id: ${serverId}`));
    this.#server = createServer();
    this.#server.on('connection', () => {
      this.connections++;
    });
    this.#server.on('upgrade', (req, socket, head) =>
      wss.handleUpgrade(req, socket, head, (ws) => ssh.injectSocket(new WebSocketStream(ws) as never)),
    );
  }

  async start(): Promise<this> {
    await new Promise<void>((r) => this.#server.listen(0, '127.0.0.1', r));
    this.port = (this.#server.address() as { port: number }).port;
    return this;
  }

  close(): void {
    this.#server.close();
    this.#server.closeAllConnections();
  }
}

let upstream: TestUpstream;
const processes: TowerProcess[] = [];
const fakes: RecordingProxy[] = [];
let tokenKc: string;
let certKc: string;
let stack: Stack;

function agent(args: string[]): TowerProcess {
  const p = new TowerProcess(
    'agent',
    ['agent', '--name', 'alpha', '--token', 'f'.repeat(64), '--max-retry', '1', '--max-retry-interval', '1s', ...args],
    {},
    TOWER,
  );
  processes.push(p);
  return p;
}

async function fake(offer: string[], serverId?: string): Promise<RecordingProxy> {
  const f = await new RecordingProxy(offer, serverId).start();
  fakes.push(f);
  return f;
}

before(async () => {
  upstream = await TestUpstream.start();
  stack = new Stack();
  tokenKc = upstream.writeKubeconfig(join(stack.dataDir, 'token.kubeconfig'), 'token');
  certKc = upstream.writeKubeconfig(join(stack.dataDir, 'cert.kubeconfig'), 'cert');
});

after(async () => {
  await Promise.all(processes.map((p) => p.stop('SIGKILL')));
  for (const f of fakes) f.close();
  await stack?.close();
  await upstream?.close();
});

describe("a tower agent sends its member's credentials nowhere", () => {
  for (const [how, kc] of [
    ['a bearer token', () => tokenKc],
    ['a client certificate', () => certKc],
  ] as const) {
    test(`with ${how}, to a pinned tower proxy it sends no credential at all`, async () => {
      const f = await fake(['tls-at-agent', 'auth-at-agent']);
      const a = agent([
        '--proxy-server',
        `http://127.0.0.1:${f.port}`,
        '--proxy-fingerprint',
        f.fingerprint,
        '--kubeconfig',
        kc(),
      ]);
      assert.equal(await a.exited, 1);
      assert.equal(f.configs.length, 1);
      const sent = f.configs[0]!;
      for (const k of ['BearerToken', 'CertData', 'KeyData', 'CAData'])
        assert.equal(sent[k], undefined, `${k} was sent`);
      assert.deepEqual(sent.TowerFeatures, ['tls-at-agent', 'auth-at-agent']);
      assert.doesNotMatch(JSON.stringify(sent), new RegExp(upstream.token));
    });
  }

  test('to a proxy nothing verifies it sends nothing at all, and says why', async () => {
    const f = await fake(['tls-at-agent', 'auth-at-agent']);
    const a = agent(['--proxy-server', `http://127.0.0.1:${f.port}`, '--kubeconfig', tokenKc]);
    assert.equal(await a.exited, 1);
    assert.match(
      a.output,
      pattern(
        /^tower agent: refusing to connect to http:\/\/127\.0\.0\.1:\d+: nothing verifies /m,
        /that it is the proxy\. Give --proxy-fingerprint .*--insecure-skip-proxy-verification/m,
      ),
    );
    assert.equal(f.connections, 0, 'not even a TCP connection');
  });

  test('to a server with another host key it sends no config', async () => {
    const f = await fake(['tls-at-agent', 'auth-at-agent']);
    const a = agent([
      '--proxy-server',
      `http://127.0.0.1:${f.port}`,
      '--proxy-fingerprint',
      `SHA256:${'A'.repeat(43)}`,
      '--kubeconfig',
      tokenKc,
    ]);
    assert.equal(await a.exited, 1);
    assert.match(a.output, /the proxy's host key is SHA256:\S+, not SHA256:A{43}/);
    assert.ok(f.connections > 0);
    assert.equal(f.configs.length, 0);
  });

  test('a verified v1 (Go) proxy, which cannot do without them, gets the credentials v1 defines', async () => {
    const f = await fake([]);
    const a = agent([
      '--proxy-server',
      `http://127.0.0.1:${f.port}`,
      '--proxy-fingerprint',
      f.fingerprint,
      '--kubeconfig',
      tokenKc,
    ]);
    assert.equal(await a.exited, 1);
    assert.equal(Buffer.from(f.configs[0]!.BearerToken as string, 'base64').toString(), upstream.token);
  });

  test('--insecure-skip-proxy-verification connects anyway, and says so loudly', async () => {
    const f = await fake(['tls-at-agent', 'auth-at-agent']);
    const a = agent([
      '--proxy-server',
      `http://127.0.0.1:${f.port}`,
      '--insecure-skip-proxy-verification',
      '--kubeconfig',
      tokenKc,
    ]);
    assert.equal(await a.exited, 1);
    assert.match(a.output, /WARN .*INSECURE: --insecure-skip-proxy-verification: the proxy is not verified/);
    assert.equal(f.configs.length, 1);
  });
});

describe('what a proxy or a kubeconfig says is not trusted either', () => {
  test('a refusal full of terminal escapes reaches the terminal escaped and cut short', async () => {
    const f = await fake(['tls-at-agent', 'auth-at-agent']);
    f.refusal = `Unauthorized agent \x1b[2J\x1b]0;owned\x07${'x'.repeat(5000)}`;
    const a = agent([
      '--proxy-server',
      `http://127.0.0.1:${f.port}`,
      '--proxy-fingerprint',
      f.fingerprint,
      '--kubeconfig',
      tokenKc,
    ]);
    assert.equal(await a.exited, 1);
    assert.match(a.output, /the proxy refused agent "alpha": Unauthorized agent \\x1b\[2J/);
    assert.doesNotMatch(a.output, /[\x07\x1b]/);
    assert.ok(a.output.length < 3000, `${a.output.length} characters printed`);
  });

  test('a token with a line break in the member kubeconfig is refused before it can reach a header', async () => {
    const kc = join(stack.dataDir, 'crlf.kubeconfig');
    writeFileSync(
      kc,
      readFileSync(tokenKc, 'utf8').replace(/token: (\S+)/, 'token: "$1\\r\\nImpersonate-User: admin"'),
    );
    const f = await fake(['tls-at-agent', 'auth-at-agent']);
    const a = agent([
      '--proxy-server',
      `http://127.0.0.1:${f.port}`,
      '--proxy-fingerprint',
      f.fingerprint,
      '--kubeconfig',
      kc,
    ]);
    assert.equal(await a.exited, 1);
    assert.match(
      a.output,
      pattern(
        /^tower agent: the token of kubeconfig .*crlf\.kubeconfig is /m,
        /not a bearer token: it must be printable ASCII without spaces$/m,
      ),
    );
    assert.equal(f.connections, 0);
  });
});

describe('a proxy that names replicas is not trusted with what it says of them', () => {
  const cases: [string, string | Buffer, RegExp][] = [
    ['not JSON', 'not json\n', /control message that is not one; control channel closed .*malformed control message/],
    ['a line without end', Buffer.alloc(70 * 1024, 'a'), /control line over the limit; control channel closed/],
    [
      'too many replicas',
      JSON.stringify({ server: 'fake-1', servers: Array.from({ length: 100 }, (_, i) => `r${i}`), draining: false }) +
        '\n',
      /names 100 replicas, more than 32/,
    ],
    [
      'an id that is a path',
      JSON.stringify({ server: 'fake-1', servers: ['../x'], draining: false }) + '\n',
      /invalid server id \\"\.\.\/x\\"/,
    ],
    [
      'a wrong type',
      JSON.stringify({ server: 'fake-1', servers: 'r1', draining: 'no' }) + '\n',
      /want \{\\"server\\": string/,
    ],
  ];
  for (const [what, line, logged] of cases) {
    test(`${what} on the control channel ends that channel, not the session or the agent`, async () => {
      const f = await fake(['tls-at-agent', 'auth-at-agent', 'replicas'], 'fake-1');
      f.refusal = undefined;
      f.control = [line];
      const a = agent([
        '--proxy-server',
        `http://127.0.0.1:${f.port}`,
        '--proxy-fingerprint',
        f.fingerprint,
        '--kubeconfig',
        tokenKc,
      ]);
      await a.waitFor(logged);
      assert.deepEqual(f.configs[0]!.TowerFeatures, ['tls-at-agent', 'auth-at-agent', 'replicas']);
      await new Promise((r) => setTimeout(r, 500));
      assert.ok(a.running);
      assert.equal(f.connections, 1, 'the session stays');
      assert.doesNotMatch(a.output, /disconnected from proxy/);
    });
  }

  test('a server id that is not one is ignored: the agent holds one session, as with a v1 proxy', async () => {
    const f = await fake(['tls-at-agent', 'auth-at-agent', 'replicas'], '../evil');
    f.refusal = undefined;
    const a = agent([
      '--proxy-server',
      `http://127.0.0.1:${f.port}`,
      '--proxy-fingerprint',
      f.fingerprint,
      '--kubeconfig',
      tokenKc,
    ]);
    await a.waitFor(/connected to proxy/);
    assert.deepEqual(f.configs[0]!.TowerFeatures, ['tls-at-agent', 'auth-at-agent']);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(f.connections, 1);
  });
});

describe('TLS on the agent port (wss://)', () => {
  before(async () => {
    await stack.startProxy(['--agent-tls']);
  });

  test(
    'the proxy records an https:// agent address, ' + 'and the join command carries it with the fingerprint',
    async () => {
      const { join: joinCommand } = await stack.token('alpha');
      assert.match(
        joinCommand,
        new RegExp(`--proxy-server https://127\\.0\\.0\\.1:${stack.agentPort} --proxy-fingerprint SHA256:`),
      );
    },
  );

  test("an agent verifies the proxy's certificate with --proxy-ca alone, and kubectl goes through", async () => {
    const { token } = await stack.token('alpha');
    const a = new TowerProcess(
      'agent wss',
      [
        'agent',
        '--name',
        'alpha',
        '--token',
        token,
        '--proxy-server',
        `https://127.0.0.1:${stack.agentPort}`,
        '--proxy-ca',
        join(stack.dataDir, 'ca.crt'),
        '--kubeconfig',
        tokenKc,
      ],
      {},
    );
    processes.push(a);
    await a.waitFor(/connected to proxy/);
    assert.match(a.output, /agent starting .*verified=--proxy-ca/);
    const r = await kubectl(await stack.kubeconfig('alpha'), ['get', '--raw', '/api']);
    assert.equal(r.code, 0, r.stderr);
    await a.stop();
  });

  test("without the CA that signed it, the proxy's certificate is refused", async () => {
    const a = agent(['--proxy-server', `https://127.0.0.1:${stack.agentPort}`, '--kubeconfig', tokenKc]);
    assert.equal(await a.exited, 1);
    assert.match(
      a.output,
      /cannot reach the proxy at wss:\/\/127\.0\.0\.1:\d+: .*(self.signed|unable to (get|verify)|certificate)/i,
    );
  });

  test('the host key and the CA survive a restart: pinned agents keep working', async () => {
    const fingerprint = stack.fingerprint;
    const ca = readFileSync(join(stack.dataDir, 'ca.crt'), 'utf8');
    await stack.proxy!.stop();
    await stack.startProxy(['--agent-tls']);
    assert.equal(stack.fingerprint, fingerprint);
    assert.equal(readFileSync(join(stack.dataDir, 'ca.crt'), 'utf8'), ca);
  });
});
