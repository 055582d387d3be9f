import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pattern } from './support/pattern.ts';
import { kubectl, Stack } from './support/stack.ts';
import { run, tower } from './support/tower.ts';
import { TestUpstream } from './support/upstream.ts';

let stack: Stack;
let upstream: TestUpstream;
let memberKc: string;
let file: string;

before(async () => {
  upstream = await TestUpstream.start();
  stack = new Stack();
  await stack.startProxy();
  memberKc = upstream.writeKubeconfig(join(stack.dataDir, 'member.kubeconfig'), 'token');
  file = join(stack.dataDir, 'clusters', 'alpha.yaml');
});

after(async () => {
  await stack?.close();
  await upstream?.close();
});

const unusable = (from: number) => (stack.proxy!.output.slice(from).match(/cluster record unusable/g) ?? []).length;
const settle = () => new Promise((r) => setTimeout(r, 2000));

test('an emptied cluster file: the old token stops working at once, logged once, not per poll', async () => {
  const { token } = await stack.token('alpha');
  const agent = stack.startAgent('alpha', token, memberKc);
  await agent.waitFor(/connected to proxy/);
  const from = stack.proxy!.output.length;
  writeFileSync(file, '');
  // the live session goes, and its reconnection with the old token is refused
  assert.equal(await agent.exited, 1);
  assert.match(agent.output, /the proxy refused agent "alpha": Unauthorized agent/);
  await stack.proxy!.waitFor(
    /ERROR cluster record unusable: its agents are refused cluster=alpha why=".*alpha\.yaml is empty" sessionsClosed=1/,
    5000,
    from,
  );
  await settle();
  assert.equal(unusable(from), 1, 'one line per change, not one per poll');
});

test('unparseable YAML: a new change, a new line, then silence', async () => {
  const from = stack.proxy!.output.length;
  writeFileSync(file, 'name: [unclosed');
  await stack.proxy!.waitFor(/cluster record unusable: .*is not YAML/, 5000, from);
  await settle();
  assert.equal(unusable(from), 1);
});

test('tower token on an unusable record exits 1 with the fix; it never rewrites the token by itself', async () => {
  const r = await tower(['token', 'alpha'], stack.env);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    pattern(
      /^tower token: cluster "alpha" is registered, but .*alpha\.yaml is not YAML .*; /,
      /its agents are refused\. Restore the file, or write a new token with: tower token alpha --rotate\n$/,
    ),
  );
  const kc = await tower(['kubeconfig', 'alpha'], stack.env);
  assert.equal(kc.code, 1);
  assert.match(kc.stderr, /cluster "alpha" is registered, but/);
});

test('an unreadable record (a directory where the file was) is refused the same way', async () => {
  rmSync(file);
  mkdirSync(file);
  const r = await tower(['token', 'alpha'], stack.env);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /alpha\.yaml cannot be read: EISDIR/);
  rmSync(file, { recursive: true });
  writeFileSync(file, '');
});

test('a FIFO where the record was (it would block a read for ever) is refused the same way, at once', async () => {
  rmSync(file);
  assert.equal((await run('mkfifo', [file])).code, 0);
  const r = await tower(['token', 'alpha'], stack.env);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /alpha\.yaml is not a regular file/);
  // the proxy read it too, and serves on
  await stack.proxy!.waitFor(/alpha\.yaml is not a regular file/);
  assert.equal((await fetch(`${stack.proxyUrl}/readyz`)).status, 200);
  rmSync(file);
  writeFileSync(file, '');
});

test('--rotate writes a new token; agents with it connect; tower token then prints that same token', async () => {
  const rotated = await stack.token('alpha', ['--rotate']);
  const again = await stack.token('alpha');
  assert.equal(again.token, rotated.token, "an existing cluster's token is printed, never reissued");
  const agent = stack.startAgent('alpha', rotated.token, memberKc);
  await agent.waitFor(/connected to proxy/);
  await stack.proxy!.waitFor(/cluster record usable again cluster=alpha/);
  const r = await kubectl(await stack.kubeconfig('alpha'), ['get', '--raw', '/api']);
  assert.equal(r.code, 0, r.stderr);
});

test(
  'other files of the data dir are strangers too: ' + 'a broken record of addresses or host key gets a clear error',
  async () => {
    const record = join(stack.dataDir, 'proxy.yaml');
    const hostKey = join(stack.dataDir, 'ssh_host_key');
    const goodRecord = readFileSync(record, 'utf8');
    const goodKey = readFileSync(hostKey, 'utf8');
    try {
      writeFileSync(record, 'agentUrl: 5\ngatewayUrl: [x]\n');
      const r = await tower(['token', 'alpha'], stack.env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /ignoring an unusable file in the data dir .*proxy\.yaml why="is malformed"/);
      assert.match(r.stdout, /--proxy-server http:\/\/127\.0\.0\.1:8080/, 'the default address is printed instead');
      writeFileSync(hostKey, '-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n-----END OPENSSH PRIVATE KEY-----\n', {
        mode: 0o600,
      });
      const k = await tower(['token', 'alpha'], stack.env);
      assert.equal(k.code, 1);
      assert.match(
        k.stderr,
        pattern(
          /^tower token: the proxy's SSH host key in .* is not a usable /m,
          /private key \(.*\); restore it, or remove it to make a new one/m,
        ),
      );
      assert.doesNotMatch(k.stderr, /unexpected error|\n\s+at /);
    } finally {
      writeFileSync(record, goodRecord);
      writeFileSync(hostKey, goodKey, { mode: 0o600 });
    }
  },
);
