import { Builtins, Cli } from 'clipanion';
import { AgentCommand } from './cli/agent.ts';
import { InstallAgentCommand, InstallProxyCommand } from './cli/install.ts';
import { KubeconfigCommand } from './cli/kubeconfig.ts';
import { ProxyCommand } from './cli/proxy.ts';
import { TokenCommand } from './cli/token.ts';
import { VERSION } from './version.ts';

const cli = new Cli({ binaryLabel: 'tower', binaryName: 'tower', binaryVersion: VERSION, enableColors: false });
cli.register(ProxyCommand);
cli.register(AgentCommand);
cli.register(TokenCommand);
cli.register(KubeconfigCommand);
cli.register(InstallProxyCommand);
cli.register(InstallAgentCommand);
cli.register(Builtins.HelpCommand);
cli.register(Builtins.VersionCommand);

// SEA binaries see [node, binary, ...]; so does `node bundle.cjs`. Exit when the command is done,
// even if a library left a handle open: pipes and files are written synchronously on Linux.
cli.run(process.argv.slice(2)).then((code) => process.exit(code), (err: Error) => {
  process.stderr.write(`tower: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
