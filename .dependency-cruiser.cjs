// dependency-cruiser: the layering of src/, checked by `npm run lint` (and so by CI).
// A module may import its own layer and the layers below it, never one above:
//   0  src/errors.ts, src/version.ts
//   1  src/config/, src/observe/, src/http/, src/native/
//   2  src/tunnel/, then src/pki/ (pki may import tunnel, not the reverse), src/replicas.ts
//   3  src/mode/ (the deployment mode: file and kubernetes)
//   4  src/proxy/ and src/agent/ (never each other)
//   5  src/cli/
//   6  src/main.ts
// A new folder or top-level file under src/ gets its rank here, or "in-a-layer" fails.

const RANK_0 = '^src/(errors|version)\\.ts$';
const RANK_1 = '^src/(config|observe|http|native)/';
const TUNNEL = '^src/tunnel/';
const PKI = '^src/pki/';
const REPLICAS = '^src/replicas\\.ts$';
const MODE = '^src/mode/';
const PROXY = '^src/proxy/';
const AGENT = '^src/agent/';
const CLI = '^src/cli/';
const MAIN = '^src/main\\.ts$';
const LAYERS = [RANK_0, RANK_1, TUNNEL, PKI, REPLICAS, MODE, PROXY, AGENT, CLI, MAIN];

/** A rule that `from` imports no layer but the given ones (imports outside every layer are "in-a-layer"'s). */
const onlyBelow = (name, comment, from, allowed) => ({
  name,
  comment,
  severity: 'error',
  from: { path: from },
  to: { path: LAYERS, pathNot: allowed },
});

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    onlyBelow('no-upward-from-base', 'errors.ts and version.ts are the bottom: they import no other layer', RANK_0, [
      RANK_0,
    ]),
    onlyBelow(
      'no-upward-from-foundations',
      'config/, observe/, http/ and native/ import only errors.ts, version.ts and each other',
      RANK_1,
      [RANK_0, RANK_1],
    ),
    onlyBelow(
      'no-upward-from-tunnel',
      'the tunnel core is shared by both ends: it knows nothing of keys, replicas, modes, proxy or agent',
      TUNNEL,
      [RANK_0, RANK_1, TUNNEL],
    ),
    onlyBelow(
      'no-upward-from-pki',
      'pki may build on the tunnel (host keys), but not on replicas, the mode, proxy, agent or the CLI',
      PKI,
      [RANK_0, RANK_1, TUNNEL, PKI],
    ),
    onlyBelow(
      'no-upward-from-replicas',
      'replica counting is neutral: the mode and the proxy both import it, it imports neither',
      REPLICAS,
      [RANK_0, RANK_1],
    ),
    onlyBelow(
      'no-upward-from-mode',
      'the deployment mode is what proxy, agent and CLI are given: it imports none of them',
      MODE,
      [RANK_0, RANK_1, TUNNEL, PKI, REPLICAS, MODE],
    ),
    {
      name: 'proxy-not-agent',
      comment: 'proxy and agent are the two ends of the tunnel: what both need lives in tunnel/ (or below)',
      severity: 'error',
      from: { path: PROXY },
      to: { path: AGENT },
    },
    {
      name: 'agent-not-proxy',
      comment: 'the agent runs in the member cluster and shares only the layers below with the proxy',
      severity: 'error',
      from: { path: AGENT },
      to: { path: PROXY },
    },
    onlyBelow('no-upward-from-proxy', 'the proxy is started by the CLI and never imports it', PROXY, [
      RANK_0,
      RANK_1,
      TUNNEL,
      PKI,
      REPLICAS,
      MODE,
      PROXY,
      AGENT, // reported as proxy-not-agent
    ]),
    onlyBelow('no-upward-from-agent', 'the agent is started by the CLI and never imports it', AGENT, [
      RANK_0,
      RANK_1,
      TUNNEL,
      PKI,
      REPLICAS,
      MODE,
      AGENT,
      PROXY, // reported as agent-not-proxy
    ]),
    onlyBelow(
      'no-upward-from-cli',
      'the commands are started by main.ts and never import it',
      CLI,
      LAYERS.filter((layer) => layer !== MAIN),
    ),
    {
      name: 'in-a-layer',
      comment: 'every module in src/ belongs to a layer above; a new folder or top-level file is given its rank here',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^src/', pathNot: LAYERS },
    },
    {
      name: 'no-circular-across-folders',
      comment:
        'a cycle between folders means the layering is wrong somewhere; cycles inside a folder are its own business',
      severity: 'error',
      from: { path: '^src/([^/]+)/' },
      to: { circular: true, pathNot: '^src/$1/' },
    },
    {
      name: 'no-circular-across-folders-top-level',
      comment: 'the same for the files directly in src/ (errors.ts, version.ts, replicas.ts, main.ts)',
      severity: 'error',
      from: { path: '^src/[^/]+$' },
      to: { circular: true, pathNot: '^src/[^/]+$' },
    },
    {
      name: 'no-tests-in-src',
      comment: 'the binary is built from src/: it never imports test fixtures or the npm scripts',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(test|scripts)/' },
    },
    {
      name: 'no-dev-dependencies-in-src',
      comment: 'what src/ imports ships in the binary: it must be a dependency, not a devDependency (types are erased)',
      severity: 'error',
      from: { path: '^src/' },
      to: { dependencyTypes: ['npm-dev'], dependencyTypesNot: ['type-only'] },
    },
    {
      name: 'no-undeclared-packages',
      comment: 'a package src/ imports is listed in package.json (not merely present in node_modules)',
      severity: 'error',
      from: { path: '^src/' },
      to: { dependencyTypes: ['npm-no-pkg', 'npm-unknown'] },
    },
    {
      name: 'resolvable',
      comment: 'every import resolves; an import depcruise cannot follow would also escape the rules above',
      severity: 'error',
      from: { path: '^src/' },
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    // type-only imports count: they tie the layers together as much as values do
    tsPreCompilationDeps: true,
    // the imports name their `.ts` files (allowImportingTsExtensions, moduleResolution nodenext)
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      extensions: ['.ts', '.cjs', '.mjs', '.js', '.json', '.node'],
    },
  },
};
