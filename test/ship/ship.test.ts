import assert from 'node:assert/strict';
import { chownSync, copyFileSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startMemberCluster, type MemberCluster } from '../support/cluster.ts';
import { joinCommand, kubectl } from '../support/stack.ts';
import { freePort, removeDir, ROOT, run, tempDir, TOWER, TowerProcess } from '../support/tower.ts';

/**
 * What ships: the OCI image (both architectures, unpacked with umoci and run from its root
 * filesystem in a chroot as its user) and the linux-arm64 binary (under qemu-user), each carrying
 * kubectl to a real kube-apiserver. Run by `npm run test:ship` after `npm run build -- --arch all`
 * and `npm run image -- --arch all`.
 */
const VERSION = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version as string;
const LAYOUT = join(ROOT, 'dist', 'oci');
const ARM64 = join(ROOT, 'dist', 'tower-linux-arm64');
const USER = '65532:65532';

let member: MemberCluster;
const dirs: string[] = [];
const processes: TowerProcess[] = [];

function scratch(prefix: string): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d;
}

/** umoci unpack of `tag` into a fresh directory: its runtime config.json and its rootfs */
async function unpack(tag: string): Promise<{
  config: { process: { user: { uid: number; gid: number }; args: string[]; env: string[] } };
  rootfs: string;
}> {
  const bundle = join(scratch('bundle'), 'b');
  const r = await run('umoci', ['unpack', '--image', `${LAYOUT}:${tag}`, bundle]);
  assert.equal(r.code, 0, r.stderr);
  return { config: JSON.parse(readFileSync(join(bundle, 'config.json'), 'utf8')), rootfs: join(bundle, 'rootfs') };
}

function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => !e.isDirectory())
    .map((e) => '/' + relative(dir, join(e.parentPath, e.name)))
    .sort();
}

function start(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): TowerProcess {
  const p = new TowerProcess(name, args, env, cmd);
  processes.push(p);
  return p;
}

before(async () => {
  member = await startMemberCluster();
});

after(async () => {
  await Promise.all(processes.map((p) => p.stop('SIGKILL')));
  await member?.stop();
  for (const d of dirs) removeDir(d);
});

/** proxy, token, agent and kubeconfig: `tower` is how each is run; returns kubectl's namespaces through it */
async function carry(
  tower: (name: string, args: string[]) => TowerProcess,
  dataDir: string,
  memberKc: string,
  agentRunner: (args: string[]) => TowerProcess = (a) => tower('agent', a),
): Promise<string> {
  const [port, gateway] = [await freePort(), await freePort()];
  const proxy = tower('proxy', [
    'proxy',
    '--data-dir',
    dataDir,
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '--gateway-port',
    String(gateway),
  ]);
  await proxy.waitFor(/proxy serving .* crypto=native/, 30_000);
  const token = tower('token', ['token', 'alpha', '--data-dir', dataDir]);
  assert.equal(await token.exited, 0, token.output);
  const joinArgs = joinCommand(token.output)!.replace('<member kubeconfig>', memberKc).split(' ').slice(1);
  const agent = agentRunner(joinArgs);
  await agent.waitFor(/connected to proxy/, 120_000);
  const kc = tower('kubeconfig', ['kubeconfig', 'alpha', '--data-dir', dataDir]);
  assert.equal(await kc.exited, 0, kc.output);
  const file = join(scratch('kc'), 'alpha.kubeconfig');
  // the runner merges stdout and stderr (where tower kubeconfig says what it issued): the kubeconfig alone
  const end = 'preferences: {}\n';
  writeFileSync(file, kc.output.slice(kc.output.indexOf('apiVersion'), kc.output.indexOf(end) + end.length));
  const r = await kubectl(file, ['get', 'namespaces', '-o', 'name']);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

describe('the OCI image', () => {
  test(
    `${LAYOUT}:${VERSION} is an index of linux/amd64 and linux/arm64; ` +
      `the docker-archive loads as tower:${VERSION}`,
    async () => {
      const index = JSON.parse((await run('skopeo', ['inspect', '--raw', `oci:${LAYOUT}:${VERSION}`])).stdout) as {
        mediaType: string;
        manifests: { platform: { os: string; architecture: string } }[];
      };
      assert.equal(index.mediaType, 'application/vnd.oci.image.index.v1+json');
      assert.deepEqual(index.manifests.map((m) => `${m.platform.os}/${m.platform.architecture}`).sort(), [
        'linux/amd64',
        'linux/arm64',
      ]);
      for (const arch of ['amd64', 'arm64']) {
        const archive = join(ROOT, 'dist', `tower-${VERSION}-${arch}.tar`);
        const r = await run('skopeo', ['inspect', '--config', `docker-archive:${archive}`]);
        assert.equal(r.code, 0, r.stderr);
        const c = JSON.parse(r.stdout) as {
          architecture: string;
          config: { User: string; Entrypoint: string[]; Labels: Record<string, string> };
        };
        assert.equal(c.architecture, arch);
        assert.equal(c.config.User, USER);
        assert.deepEqual(c.config.Entrypoint, ['/tower']);
        assert.equal(c.config.Labels['org.opencontainers.image.version'], VERSION);
        assert.equal(c.config.Labels['org.opencontainers.image.licenses'], 'Apache-2.0');
        assert.match(c.config.Labels['org.opencontainers.image.source']!, /\S/);
        const tags = await run('tar', ['-xOf', archive, 'manifest.json']);
        // (docker load shows docker.io/library/tower as tower)
        assert.deepEqual((JSON.parse(tags.stdout) as { RepoTags: string[] }[])[0]!.RepoTags, [
          `docker.io/library/tower:${VERSION}`,
        ]);
      }
    },
  );

  test('amd64: no shell, only the binary, its libraries, CA certificates and the user 65532', async () => {
    const { config, rootfs } = await unpack(`${VERSION}-amd64`);
    assert.deepEqual(config.process.user, { uid: 65532, gid: 65532 });
    assert.deepEqual(config.process.args, ['/tower']);
    assert.deepEqual(files(rootfs), [
      '/etc/group',
      '/etc/nsswitch.conf',
      '/etc/passwd',
      '/etc/ssl/certs/ca-certificates.crt',
      '/lib/x86_64-linux-gnu/libc.so.6',
      '/lib/x86_64-linux-gnu/libdl.so.2',
      '/lib/x86_64-linux-gnu/libgcc_s.so.1',
      '/lib/x86_64-linux-gnu/libm.so.6',
      '/lib/x86_64-linux-gnu/libpthread.so.0',
      '/lib/x86_64-linux-gnu/libstdc++.so.6',
      '/lib64/ld-linux-x86-64.so.2',
      '/tower',
    ]);
    assert.equal(statSync(join(rootfs, 'home/nonroot')).uid, 65532);
  });

  test(
    'amd64: its root filesystem runs tower --version, ' +
      'and a proxy and an agent that carry kubectl to a real kube-apiserver',
    async () => {
      const { rootfs } = await unpack(`${VERSION}-amd64`);
      const version = await run('chroot', [`--userspec=${USER}`, rootfs, '/tower', '--version'], {
        env: { HOME: '/home/nonroot' },
      });
      assert.equal(version.code, 0, version.stderr);
      assert.equal(version.stdout, `${VERSION}\n`);
      assert.equal(version.stderr, '', "the native crypto loads from the image's /tmp");
      copyFileSync(member.kubeconfig, join(rootfs, 'home/nonroot/member.kubeconfig'));
      chownSync(join(rootfs, 'home/nonroot/member.kubeconfig'), 65532, 65532);
      const inImage = (name: string, args: string[]) =>
        start(`image ${name}`, 'chroot', [`--userspec=${USER}`, rootfs, '/tower', ...args], {
          HOME: '/home/nonroot',
          TMPDIR: '',
        });
      const namespaces = await carry(inImage, '/home/nonroot/data', '/home/nonroot/member.kubeconfig');
      assert.match(namespaces, /namespace\/kube-system/);
    },
  );

  test(
    'arm64: its root filesystem has the arm64 loader and libraries, ' +
      'and runs tower under qemu-user with them alone',
    async () => {
      const { config, rootfs } = await unpack(`${VERSION}-arm64`);
      assert.deepEqual(config.process.user, { uid: 65532, gid: 65532 });
      assert.ok(existsSync(join(rootfs, 'lib/ld-linux-aarch64.so.1')));
      const r = await run('qemu-aarch64', ['-L', rootfs, join(rootfs, 'tower'), 'version'], {
        env: { HOME: join(rootfs, 'home/nonroot') },
      });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^tower \S+ \(commit \S+\), Node\.js 24\.\d+\.\d+, linux\/arm64, crypto: native\n$/);
    },
  );
});

describe('linux-arm64', () => {
  const qemu = (args: string[]) => ['-L', '/usr/aarch64-linux-gnu', ARM64, ...args];

  test('dist/tower-linux-arm64 is an aarch64 executable that prints its version under qemu-user', async () => {
    const head = readFileSync(ARM64).subarray(0, 20);
    assert.equal(head.readUInt16LE(18), 183, 'ELF machine EM_AARCH64');
    const r = await run('qemu-aarch64', qemu(['--version']));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${VERSION}\n`);
  });

  test('as an agent under qemu-user it carries kubectl through an x64 proxy to a real kube-apiserver', async () => {
    const dataDir = scratch('arm64-data');
    const host = (name: string, args: string[]) => start(`x64 ${name}`, TOWER, args);
    const namespaces = await carry(host, dataDir, member.kubeconfig, (args) =>
      start('arm64 agent', 'qemu-aarch64', qemu(args)),
    );
    assert.match(namespaces, /namespace\/kube-system/);
    const agent = processes.find((p) => p.name === 'arm64 agent')!;
    assert.match(agent.output, /agent starting .* crypto=native/);
  });
});
