import { VERSION_OPTIONS } from '../config/options.ts';
import { CRYPTO_BACKEND, CRYPTO_PROBLEM } from '../tunnel/ssh.ts';
import { COMMIT, VERSION } from '../version.ts';
import { TowerCommand, type CommandDoc } from './base.ts';

export class VersionCommand extends TowerCommand {
  static override paths = [['version']];
  static override options = VERSION_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'version',
    summary: 'Print the version, commit, Node.js version and crypto backend',
    details:
      'The crypto backend is native (the embedded OpenSSL binding for the SSH ciphers) or js (the portable ' +
      'fallback, several times slower per byte). `tower --version` prints the version alone.',
    examples: [['As JSON', 'tower version -o json']],
  };
  readonly command = 'version';

  async run(): Promise<number> {
    const o = this.load(VERSION_OPTIONS);
    const info = {
      version: VERSION,
      commit: COMMIT,
      node: process.versions.node,
      platform: `${process.platform}/${process.arch}`,
      crypto: CRYPTO_BACKEND,
      cryptoProblem: CRYPTO_PROBLEM,
    };
    if (o.output === 'json') process.stdout.write(JSON.stringify(info, null, 2) + '\n');
    else
      process.stdout.write(
        `tower ${info.version} (commit ${info.commit}), Node.js ${info.node}, ${info.platform}, crypto: ` +
          `${info.crypto}\n`,
      );
    return 0;
  }
}
