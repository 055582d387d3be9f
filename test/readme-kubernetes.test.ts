// The README's Kubernetes-mode block, run as it is written there: on a plain host (a kube-apiserver without
// KubeSphere) and a member, from a directory holding host.kubeconfig, member.kubeconfig and dist/tower. What a
// reader fills in by hand (the token and fingerprint `tower token` printed, its port) comes from the printed join
// command; the ports are free ones given as TOWER_* environment, which every flag reads.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { joinCommand, kubectl } from './support/stack.ts';
import { freePort, ROOT, tempDir, TOWER } from './support/tower.ts';

let host: MemberCluster;
let member: MemberCluster;
const background: ChildProcess[] = [];

before(async () => {
  [host, member] = await Promise.all([startMemberCluster(), startMemberCluster()]);
  // what "the member's RBAC grants group viewers": reading namespaces
  for (const args of [
    ['create', 'clusterrole', 'viewer', '--verb=get,list,watch', '--resource=namespaces'],
    ['create', 'clusterrolebinding', 'viewers', '--clusterrole=viewer', '--group=viewers'],
  ]) {
    const r = await kubectl(member.kubeconfig, args);
    assert.equal(r.code, 0, r.stderr);
  }
});

after(async () => {
  for (const p of background) if (p.exitCode === null) p.kill('SIGKILL');
  await Promise.all([host?.stop(), member?.stop()]);
});

/** The block's commands: continuation lines joined, comments and blank lines left out. */
function readmeBlock(): string[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('### In a KubeSphere host cluster (Kubernetes mode)'));
  const block = /```sh\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(block, 'the README has the Kubernetes-mode block');
  return block
    .replace(/\\\n\s*/g, '')
    .split('\n')
    .map((line) => line.replace(/(^|\s{2,})#.*$/, '').trim())
    .filter(Boolean);
}

/** Runs `line` with bash in `dir`; a line ending in & is started and left running, its output kept. */
function sh(line: string, dir: string, env: NodeJS.ProcessEnv): ChildProcess & { output: string } {
  const p = spawn('bash', ['-c', `exec ${line.replace(/&$/, '')}`], {
    cwd: dir,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  }) as ChildProcess & { output: string };
  p.output = '';
  p.stdout!.on('data', (d: Buffer) => (p.output += d.toString()));
  p.stderr!.on('data', (d: Buffer) => (p.output += d.toString()));
  return p;
}

function finished(p: ChildProcess & { output: string }): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => p.on('close', (code) => resolve({ code, output: p.output })));
}

async function printed(p: ChildProcess & { output: string }, re: RegExp, what: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!re.test(p.output)) {
    if (p.exitCode !== null) assert.fail(`${what} exited (${p.exitCode}):\n${p.output}`);
    if (Date.now() > deadline) assert.fail(`${what} did not print ${re} within 60 s:\n${p.output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("the README's Kubernetes-mode block runs as pasted, on a host without KubeSphere", async () => {
  const dir = tempDir('readme');
  copyFileSync(host.kubeconfig, join(dir, 'host.kubeconfig'));
  copyFileSync(member.kubeconfig, join(dir, 'member.kubeconfig'));
  mkdirSync(join(dir, 'dist'));
  symlinkSync(TOWER, join(dir, 'dist', 'tower'));
  const env = {
    TOWER_HOME: join(dir, 'home'),
    TOWER_HOST: '127.0.0.1',
    TOWER_PORT: String(await freePort()),
    TOWER_GATEWAY_PORT: String(await freePort()),
  };
  let join_: string | undefined;
  let tokenOutput = '';
  const lines = readmeBlock();
  assert.ok(lines.length >= 6, lines.join('\n'));
  for (const written of lines) {
    let line = written;
    if (/^dist\/tower agent /.test(written)) {
      // what the reader copies from tower token's output, and only that
      assert.ok(join_, 'tower token ran before the agent line');
      const flags = (l: string) => [...l.matchAll(/--[a-z-]+/g)].map((m) => m[0]);
      assert.deepEqual(flags(written.replace(/ &$/, '')), flags(join_), 'the README line has the printed flags');
      line = `${join_.replace(/^\S+/, 'dist/tower').replace('<member kubeconfig>', 'member.kubeconfig')} &`;
    }
    const p = sh(line, dir, env);
    if (line.endsWith('&')) {
      background.push(p);
      await printed(p, /proxy serving|connected to proxy/, written);
      continue;
    }
    const r = await finished(p);
    assert.equal(r.code, 0, `${written}\n${r.output}`);
    if (/^dist\/tower token /.test(written)) {
      join_ = joinCommand(r.output);
      tokenOutput = r.output;
    }
    if (/^kubectl .* get namespaces$/.test(written)) assert.match(r.output, /^default\s+Active/m, written);
  }
  // jane's is a gateway kubeconfig naming her, not the Cluster's own admin one
  const jane = readFileSync(join(dir, 'jane.kubeconfig'), 'utf8');
  assert.match(jane, /^# tower kubeconfig for cluster "alpha": acts as user "jane" in groups viewers$/m);
  const create = await kubectl(join(dir, 'jane.kubeconfig'), ['create', 'namespace', 'janes']);
  assert.notEqual(create.code, 0);
  assert.match(create.stderr, /User "jane" cannot create resource "namespaces"/);

  // the other way tower token offers, the agent in the member, applies as printed to a member without KubeSphere
  const inCluster = /^ {2}(\S+ install agent .*) \| kubectl --kubeconfig <member kubeconfig> apply -f -$/m.exec(
    tokenOutput,
  );
  assert.ok(inCluster, tokenOutput);
  // (this proxy publishes a loopback address, which install agent rightly refuses: a member's name for it instead)
  const printedLine = inCluster[1]
    .replace(/^\S+/, 'dist/tower')
    .replace(/http:\/\/127\.0\.0\.1:\d+/, 'http://tower.example:8080');
  const applied = await finished(sh(`${printedLine} | kubectl --kubeconfig member.kubeconfig apply -f -`, dir, env));
  assert.equal(applied.code, 0, applied.output);
  assert.match(applied.output, /^namespace\/kubesphere-system created$/m);
  assert.match(applied.output, /^deployment\.apps\/tower-agent created$/m);
});
