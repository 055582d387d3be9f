import { Builtins, Cli } from 'clipanion';
import { AgentCommand } from './cli/agent.ts';
import { KubeconfigCommand } from './cli/kubeconfig.ts';
import { ProxyCommand } from './cli/proxy.ts';
import { TokenCommand } from './cli/token.ts';
import { VERSION } from './version.ts';

const cli = new Cli({ binaryLabel: 'tower', binaryName: 'tower', binaryVersion: VERSION, enableColors: false });
cli.register(ProxyCommand);
cli.register(AgentCommand);
cli.register(TokenCommand);
cli.register(KubeconfigCommand);
cli.register(Builtins.HelpCommand);
cli.register(Builtins.VersionCommand);

// SEA binaries see [node, binary, ...]; so does `node bundle.cjs`
cli.runExit(process.argv.slice(2));
