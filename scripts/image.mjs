// npm run image [-- --arch x64|arm64|all]: an OCI image of the tower binary, made with Debian's
// umoci (layout, layer, config) and skopeo (docker-archive), no daemon and nothing downloaded.
//
//   dist/oci                          OCI layout: tags VERSION-amd64, VERSION-arm64, and VERSION, an
//                                     image index of the architectures built
//   dist/tower-VERSION-ARCH.tar       docker-archive of each, named tower:VERSION (docker/podman load)
//
// The root filesystem holds /tower, the glibc libraries it and its native crypto binding link
// against (the loader, libc, libm, libdl, libpthread, libstdc++, libgcc_s), the CA certificates,
// /etc/passwd and /etc/group with the user nonroot (65532), its home and /tmp. No shell.
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';
import { root } from './lib.mjs';

const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const dist = join(root, 'dist');
const layout = join(dist, 'oci');
const USER = 65532;

/** per architecture: the binary, the OCI name, where its libraries come from and go to */
export const ARCHES = {
  x64: {
    binary: join(dist, 'tower'),
    oci: 'amd64',
    loader: '/lib64/ld-linux-x86-64.so.2',
    libDir: '/lib/x86_64-linux-gnu',
    from: '/lib/x86_64-linux-gnu',
  },
  arm64: {
    binary: join(dist, 'tower-linux-arm64'),
    oci: 'arm64',
    loader: '/lib/ld-linux-aarch64.so.1',
    libDir: '/lib/aarch64-linux-gnu',
    from: '/usr/aarch64-linux-gnu/lib',
  },
};
const LIBS = ['libc.so.6', 'libm.so.6', 'libdl.so.2', 'libpthread.so.0', 'libstdc++.so.6', 'libgcc_s.so.1'];

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts });
  if (r.error?.code === 'ENOENT') throw new Error(`${cmd} is not installed (Debian: apt-get install ${cmd})`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed:\n${r.stderr}`);
  return r.stdout;
}

function rootfs(arch, dir) {
  const a = ARCHES[arch];
  rmSync(dir, { recursive: true, force: true });
  const put = (src, dest, mode) => {
    const to = join(dir, dest);
    mkdirSync(dirname(to), { recursive: true });
    copyFileSync(realpathSync(src), to);
    if (mode !== undefined) chmodSync(to, mode);
  };
  put(a.binary, '/tower', 0o755);
  const loaderSrc = arch === 'x64' ? a.loader : join(a.from, 'ld-linux-aarch64.so.1');
  put(loaderSrc, a.loader, 0o755);
  for (const lib of LIBS) put(join(a.from, lib), join(a.libDir, lib), 0o644);
  put('/etc/ssl/certs/ca-certificates.crt', '/etc/ssl/certs/ca-certificates.crt', 0o644);
  writeFileSync(
    join(dir, 'etc/passwd'),
    `root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:${USER}:${USER}:nonroot:/home/nonroot:/sbin/nologin\n`,
  );
  writeFileSync(join(dir, 'etc/group'), `root:x:0:\nnonroot:x:${USER}:\n`);
  writeFileSync(join(dir, 'etc/nsswitch.conf'), 'hosts: files dns\n');
  for (const d of ['tmp', 'home/nonroot']) mkdirSync(join(dir, d), { recursive: true });
  chmodSync(join(dir, 'tmp'), 0o1777);
  chmodSync(join(dir, 'home/nonroot'), 0o700);
  chownSync(join(dir, 'home/nonroot'), USER, USER);
}

/** builds the image of `arch` into the layout; returns its tag */
function image(arch, commit) {
  const a = ARCHES[arch];
  if (!existsSync(a.binary))
    throw new Error(`${a.binary} is missing: npm run build${arch === 'x64' ? '' : ` -- --arch ${arch}`}`);
  const tag = `${pkg.version}-${a.oci}`;
  const fs = join(dist, '.image', arch);
  rootfs(arch, fs);
  const ref = `${layout}:${tag}`;
  spawnSync('umoci', ['rm', '--image', ref], { stdio: 'ignore' }); // a previous build's tag, if any
  sh('umoci', ['new', '--image', ref]);
  sh('umoci', ['insert', '--image', ref, fs, '/']);
  sh('umoci', [
    'config',
    '--image',
    ref,
    '--os',
    'linux',
    '--architecture',
    a.oci,
    '--config.entrypoint',
    '/tower',
    '--config.user',
    `${USER}:${USER}`,
    '--config.workingdir',
    '/home/nonroot',
    '--config.env',
    'HOME=/home/nonroot',
    '--config.env',
    'SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt',
    '--config.label',
    `org.opencontainers.image.title=tower`,
    '--config.label',
    `org.opencontainers.image.description=${pkg.description}`,
    '--config.label',
    `org.opencontainers.image.version=${pkg.version}`,
    '--config.label',
    `org.opencontainers.image.revision=${commit}`,
    '--config.label',
    `org.opencontainers.image.licenses=${pkg.license}`,
    '--config.label',
    `org.opencontainers.image.source=${pkg.repository?.url ?? `tower ${pkg.version}, commit ${commit}`}`,
    '--history.created_by',
    `npm run image (tower ${pkg.version}, ${a.oci})`,
  ]);
  sh('umoci', ['gc', '--layout', layout]);
  const archive = join(dist, `tower-${pkg.version}-${a.oci}.tar`);
  rmSync(archive, { force: true });
  sh('skopeo', [
    '--insecure-policy',
    'copy',
    '--quiet',
    `oci:${layout}:${tag}`,
    `docker-archive:${archive}:tower:${pkg.version}`,
  ]);
  return { tag, archive };
}

/** adds (or replaces) the tag VERSION: an OCI image index of the architecture images in the layout */
function index(tags) {
  const indexPath = join(layout, 'index.json');
  const idx = JSON.parse(readFileSync(indexPath, 'utf8'));
  const byTag = (t) => idx.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === t);
  const manifests = tags.map(({ tag, arch }) => {
    const m = byTag(tag);
    return {
      mediaType: m.mediaType,
      digest: m.digest,
      size: m.size,
      platform: { architecture: ARCHES[arch].oci, os: 'linux' },
    };
  });
  const body = JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests });
  const digest = createHash('sha256').update(body).digest('hex');
  writeFileSync(join(layout, 'blobs', 'sha256', digest), body);
  idx.manifests = idx.manifests.filter((m) => m.annotations?.['org.opencontainers.image.ref.name'] !== pkg.version);
  idx.manifests.push({
    mediaType: 'application/vnd.oci.image.index.v1+json',
    digest: `sha256:${digest}`,
    size: Buffer.byteLength(body),
    annotations: { 'org.opencontainers.image.ref.name': pkg.version },
  });
  writeFileSync(indexPath, JSON.stringify(idx));
}

function commitOf() {
  const r = spawnSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

if (process.argv[1] === new URL(import.meta.url).pathname) {
  const i = process.argv.indexOf('--arch');
  const want = i > 0 ? process.argv[i + 1] : 'x64';
  const arches = want === 'all' ? ['x64', 'arm64'] : [want];
  if (!arches.every((a) => a in ARCHES)) {
    console.error(`image: --arch is x64, arm64 or all, not ${want}`);
    process.exit(1);
  }
  const t0 = Date.now();
  try {
    if (!existsSync(join(layout, 'index.json'))) sh('umoci', ['init', '--layout', layout]);
    const commit = commitOf();
    const built = arches.map((arch) => ({ arch, ...image(arch, commit) }));
    index(built);
    for (const b of built) console.error(`image: ${layout}:${b.tag} and ${b.archive} (tower:${pkg.version})`);
    console.error(
      `image: ${layout}:${pkg.version} is the index of ${built.map((b) => ARCHES[b.arch].oci).join(' and ')} ` +
        `(${((Date.now() - t0) / 1000).toFixed(1)} s)`,
    );
  } catch (err) {
    console.error(`image: ${err.message}`);
    process.exit(1);
  }
}
