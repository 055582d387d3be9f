import { homedir } from 'node:os';
import { resolve } from 'node:path';
import { Command, Option } from 'clipanion';
import { TowerError } from '../errors.ts';
import { describeSources, loadConfig, type Loaded, type RawFlags, type Specs } from '../config/loader.ts';
import { log } from '../observe/log.ts';
import { FileStore } from '../store/file.ts';
import type { ClusterStore } from '../store/types.ts';

/** Options every subcommand shares, and the one way they load and fail. */
export abstract class TowerCommand extends Command {
  verbosity = Option.String('-v,--v', { description: 'Log verbosity: 0 (default) to 10; 2 prints where every option came from' });
  logFormat = Option.String('--log-format', { description: 'Log format: text (default) or json' });
  configFile = Option.String('--config', { description: 'YAML file of options (keys are flag names; a section per subcommand overrides); env TOWER_CONFIG' });

  abstract readonly command: string;
  abstract run(): Promise<number | void>;

  async execute(): Promise<number> {
    try {
      return (await this.run()) ?? 0;
    } catch (err) {
      if (err instanceof TowerError) {
        process.stderr.write(`tower ${this.command}: ${err.message}\n`);
      } else {
        process.stderr.write(`tower ${this.command}: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
      }
      return 1;
    }
  }

  /** Merges flags, TOWER_* environment, the config file and defaults; configures logging. */
  load<S extends Specs>(specs: S, flags: RawFlags, secrets: (keyof S)[] = []): Loaded<S>['values'] {
    const loaded = loadConfig(specs, {
      command: this.command,
      flags: { ...flags, v: this.verbosity, logFormat: this.logFormat },
      configFile: this.configFile ?? (process.env.TOWER_CONFIG || undefined),
    });
    const values = loaded.values as Record<string, unknown>;
    log.configure(values.v as number, values.logFormat as 'text' | 'json');
    if (log.enabled(2)) for (const line of describeSources(specs, loaded, secrets)) log.debug(2, `option ${line}`);
    return loaded.values;
  }

  openStore(dataDir: string | undefined): ClusterStore {
    const dir = dataDir ? resolve(dataDir.replace(/^~(?=$|\/)/, homedir())) : resolve(homedir(), '.tower');
    return new FileStore(dir);
  }
}
