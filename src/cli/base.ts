import { Command, Option } from 'clipanion';
import { ConfigError, TowerError } from '../errors.ts';
import { assertClusterName } from '../config/names.ts';
import {
  describeSources,
  flagName,
  loadConfig,
  type Loaded,
  type RawFlags,
  type Source,
  type Specs,
} from '../config/loader.ts';
import { log } from '../observe/log.ts';
import type { Mode } from '../mode/mode.ts';
import { openMode, type ModeChoice } from '../mode/open.ts';
import { apiMessage, apiStatus, CRD_MISSING_HINT, notServed } from '../mode/kubernetes/api-errors.ts';

/** What `--help` and the README show of a command besides its flags. */
export interface CommandDoc {
  /** e.g. "token NAME" */
  usage: string;
  summary: string;
  details?: string;
  examples?: [string, string][];
}

/**
 * The subcommands' base: the flags come from the command's option table (`static options`), so
 * that parsing, `--help`, the config loader and the README name the same flags; and one way to
 * load options and to fail.
 */
export abstract class TowerCommand extends Command {
  static options: Specs = {};
  static doc: CommandDoc;

  abstract readonly command: string;
  abstract run(): Promise<number | void>;

  constructor() {
    super();
    const specs = (this.constructor as typeof TowerCommand).options;
    const self = this as unknown as Record<string, unknown>;
    for (const [key, spec] of Object.entries(specs)) {
      const names = [`--${flagName(key)}`, ...(spec.short ? [`-${spec.short}`] : [])].join(',');
      self[key] = spec.kind === 'bool' ? Option.Boolean(names) : Option.String(names);
    }
  }

  /** the raw values clipanion parsed, by option key */
  get flags(): RawFlags {
    const specs = (this.constructor as typeof TowerCommand).options;
    const self = this as unknown as Record<string, string | boolean | undefined>;
    return Object.fromEntries(Object.keys(specs).map((k) => [k, self[k]]));
  }

  async execute(): Promise<number> {
    try {
      return (await this.run()) ?? 0;
    } catch (err) {
      if (err instanceof TowerError) {
        process.stderr.write(`tower ${this.command}: ${err.message}\n`);
      } else if (apiStatus(err) !== undefined) {
        // a host API call no caller described: still one line, with the API's own words
        const hint = notServed(err) ? ` (it does not serve that kind: ${CRD_MISSING_HINT})` : '';
        process.stderr.write(`tower ${this.command}: the host cluster's API answered ${apiMessage(err)}${hint}\n`);
      } else {
        // one line; where it happened only when asked for (-v 1): it is for a bug report, not for the user
        const e = err as Error;
        const where = log.enabled(1) && e?.stack ? `\n${e.stack}` : ' (-v 1 shows where it happened)';
        process.stderr.write(`tower ${this.command}: unexpected error: ${e?.message ?? String(err)}${where}\n`);
      }
      return 1;
    }
  }

  /** The NAME argument, checked: a missing or invalid one is a one-line error with an example. */
  clusterName(name: string | undefined): string {
    if (name === undefined)
      throw new ConfigError(
        `missing NAME, the cluster's name (e.g. tower ${this.command} alpha; see: tower ${this.command} --help)`,
      );
    return assertClusterName(name);
  }

  /** where each option of the last load() came from */
  sources: Record<string, Source> = {};

  /** whether the user gave an option (a flag, the environment, the config file), not its default */
  given(key: string): boolean {
    return (this.sources[key] ?? 'default') !== 'default';
  }

  /** Merges flags, TOWER_* environment, the config file and defaults; configures logging. */
  load<S extends Specs>(specs: S, secrets: (keyof S)[] = []): Loaded<S>['values'] {
    const flags = this.flags;
    const loaded = loadConfig(specs, {
      command: this.command,
      flags,
      configFile: (flags.config as string | undefined) ?? (process.env.TOWER_CONFIG || undefined),
    });
    this.sources = loaded.sources as Record<string, Source>;
    const values = loaded.values as Record<string, unknown>;
    log.configure(values.v as number, values.logFormat as 'text' | 'json');
    if (log.enabled(2)) for (const line of describeSources(specs, loaded, secrets)) log.debug(2, `option ${line}`);
    return loaded.values;
  }

  /** Runs `fn` in the mode that `o` picks, closing it after. */
  async withMode<T>(o: ModeChoice, fn: (mode: Mode) => Promise<T>): Promise<T> {
    const mode = await openMode(o, { log });
    try {
      return await fn(mode);
    } finally {
      mode.close();
    }
  }
}
