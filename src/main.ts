import './observe/gc.ts';
import { Cli } from 'clipanion';
import { AgentCommand } from './cli/agent.ts';
import type { TowerCommand } from './cli/base.ts';
import { ClustersCommand, DeleteCommand } from './cli/clusters.ts';
import { commandHelp, nearest, normalizeSwitches, overview, scanArgs, type CommandEntry } from './cli/help.ts';
import { InstallAgentCommand, InstallCrdCommand, InstallProxyCommand } from './cli/install.ts';
import { KubeconfigCommand } from './cli/kubeconfig.ts';
import { ProxyCommand } from './cli/proxy.ts';
import { RevokeCommand } from './cli/revoke.ts';
import { TokenCommand } from './cli/token.ts';
import { UninstallAgentCommand, UninstallProxyCommand } from './cli/uninstall.ts';
import { VersionCommand } from './cli/version.ts';
import { CRYPTO_PROBLEM } from './tunnel/ssh.ts';
import { VERSION } from './version.ts';

const COMMANDS = [
  ProxyCommand,
  AgentCommand,
  TokenCommand,
  KubeconfigCommand,
  RevokeCommand,
  ClustersCommand,
  DeleteCommand,
  VersionCommand,
  InstallProxyCommand,
  InstallAgentCommand,
  InstallCrdCommand,
  UninstallProxyCommand,
  UninstallAgentCommand,
];
const entries: CommandEntry[] = COMMANDS.map((cls) => ({ path: cls.paths[0]!, cls: cls as CommandEntry['cls'] }));

/** the command that `args` names, and where its own arguments start */
function resolve(args: string[]): { entry: CommandEntry; rest: string[] } | undefined {
  const entry = entries
    .filter((e) => e.path.every((p, i) => args[i] === p))
    .sort((a, b) => b.path.length - a.path.length)[0];
  return entry && { entry, rest: args.slice(entry.path.length) };
}

function fail(line: string): number {
  process.stderr.write(`${line}\n`);
  return 1;
}

async function main(args: string[]): Promise<number> {
  // said once, at every start: the SSH ciphers run several times slower on the JS fallback
  if (CRYPTO_PROBLEM) process.stderr.write(`tower: warning: running on the JS crypto: ${CRYPTO_PROBLEM}\n`);
  const first = args[0];
  if (first === undefined || first === '--help' || first === '-h') {
    process.stdout.write(overview(entries));
    return 0;
  }
  if (first === '--version') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if (first === '-v')
    return fail(
      'tower: unknown command "-v"; did you mean version? (see: tower help; -v N is a command\'s log verbosity)',
    );
  if (first === 'help') {
    if (args.length === 1) {
      process.stdout.write(overview(entries));
      return 0;
    }
    const found = resolve(args.slice(1));
    if (!found) return fail(`tower help: unknown command "${args.slice(1).join(' ')}" (see: tower help)`);
    process.stdout.write(commandHelp(found.entry));
    return 0;
  }
  const found = resolve(args);
  if (!found) {
    const words = entries.map((e) => e.path.join(' '));
    const near = nearest(first.startsWith('-') ? first.replace(/^-+/, '') : first, [
      ...new Set(entries.map((e) => e.path[0]!)),
    ]);
    const sub = words.filter((w) => w.startsWith(`${first} `));
    if (sub.length)
      return fail(
        `tower ${first}: name what to ${first}: ${orList(sub.map((w) => w.split(' ')[1]!))} (see: tower help)`,
      );
    return fail(`tower: unknown command "${first}"${near ? `; did you mean ${near}?` : ''} (see: tower help)`);
  }
  const { entry, rest } = found;
  const name = `tower ${entry.path.join(' ')}`;
  const dashes = rest.indexOf('--');
  const flags = dashes < 0 ? rest : rest.slice(0, dashes);
  if (flags.includes('--help') || flags.includes('-h')) {
    process.stdout.write(commandHelp(entry));
    return 0;
  }
  const specs = (entry.cls as typeof TowerCommand).options;
  const scan = scanArgs(rest, specs);
  if (scan.unknown) return fail(`${name}: ${scan.unknown} (see: ${name} --help)`);
  const normalized = normalizeSwitches(rest, specs);
  if (typeof normalized === 'string') return fail(`${name}: ${normalized} (see: ${name} --help)`);

  const cli = new Cli({ binaryLabel: 'tower', binaryName: 'tower', binaryVersion: VERSION, enableColors: false });
  // only the command that runs: clipanion builds one state machine over every registered command and
  // keeps it for the process's life (about 5 MiB of heap for all nine)
  cli.register(entry.cls as (typeof COMMANDS)[number]);
  let command;
  try {
    command = cli.process([...entry.path, ...normalized]);
  } catch (err) {
    // clipanion's own message, on one line: a missing value, an extra argument
    const why = ((err as Error).message.split('\n')[0] ?? '').replace(
      /^Command not found; did you mean.*$/,
      'unexpected argument',
    );
    const takes = entry.cls.doc.usage.split(' ')[entry.path.length] === 'NAME' ? 1 : 0;
    return fail(`${name}: ${syntaxProblem(why, scan.positionals.slice(takes))} (see: ${name} --help)`);
  }
  return cli.run(command);
}

/** "a or b", "a, b or c" */
function orList(words: string[]): string {
  return words.length < 2 ? words.join('') : `${words.slice(0, -1).join(', ')} or ${words.at(-1)}`;
}

/** clipanion's parse errors, said as what is wrong with the command line */
function syntaxProblem(why: string, extra: string[]): string {
  if (/Not enough arguments to option (\S+)/.test(why))
    return `${/Not enough arguments to option (\S+?)\.?$/.exec(why)![1]} needs a value`;
  if (/Extraneous positional argument|unexpected argument/.test(why))
    return `unexpected argument${extra.length > 1 ? 's' : ''} ${extra.map((a) => JSON.stringify(a)).join(' ')}`;
  return why || 'invalid command line';
}

// SEA binaries see [node, binary, ...]; so does `node bundle.cjs`. Exit when the command is done,
// even if a library left a handle open: pipes and files are written synchronously on Linux.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`tower: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
