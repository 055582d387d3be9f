import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { ConfigError } from '../errors.ts';
import { parseDuration, formatDuration } from './duration.ts';
import { formatSize, parseSize } from './size.ts';

/**
 * The one config loader: every subcommand declares its options as a table of specs, and values
 * are merged flags > TOWER_* environment > --config YAML > defaults, then validated once here.
 */
export type Kind = 'string' | 'int' | 'bool' | 'duration' | 'size';

interface SpecOf<K extends Kind, T> {
  kind: K;
  /** one or two sentences for --help and the README's flag tables */
  help: string;
  /** the value's name in usage lines (PORT, DURATION); booleans have none */
  value?: string;
  /** a one-letter alias (-o, -v) */
  short?: string;
  /** absent means "no default": the option stays unset unless a source gives it */
  default?: T;
  /** what the default is when it is not a constant ("~/.tower", "the kubeconfig's server") */
  defaultText?: string;
  /** returns the problem and its fix, or undefined when the value is good */
  check?: (value: T) => string | undefined;
  /** another environment variable read after TOWER_<NAME> (e.g. TOWER_HOME) */
  alsoEnv?: string;
}
export type OptionSpec =
  | SpecOf<'string', string>
  | SpecOf<'int', number>
  | SpecOf<'bool', boolean>
  | SpecOf<'duration', number>
  | SpecOf<'size', number>;
export type Specs = Record<string, OptionSpec>;
type ValueOf<S> = S extends { kind: 'string' } ? string : S extends { kind: 'bool' } ? boolean : number;
export type Values<S extends Specs> = {
  [N in keyof S]: S[N] extends { default: unknown } ? ValueOf<S[N]> : ValueOf<S[N]> | undefined;
};
export type Source = 'flag' | 'env' | 'config' | 'default';
export type RawFlags = Record<string, string | boolean | undefined>;
type Check<T> = (v: T) => string | undefined;
type Input<T> = Omit<SpecOf<Kind, T>, 'kind' | 'check'> & { check?: Check<T> };

const VALUE_NAMES: Record<Kind, string | undefined> = {
  string: 'STRING',
  int: 'N',
  bool: undefined,
  duration: 'DURATION',
  size: 'SIZE',
};

function make<K extends Kind, T>(kind: K) {
  return <I extends Input<T>>(input: I): I & { kind: K } => ({ value: VALUE_NAMES[kind], ...input, kind });
}

/** An option's spec: `opt.int({ help, value: 'PORT', default: 8080, check })`. */
export const opt = {
  string: make<'string', string>('string'),
  int: make<'int', number>('int'),
  bool: make<'bool', boolean>('bool'),
  duration: make<'duration', number>('duration'),
  /** bytes, written as Kubernetes quantities: 64Mi, 200M */
  size: make<'size', number>('size'),
};

export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}
export function envName(key: string): string {
  return 'TOWER_' + flagName(key).replace(/-/g, '_').toUpperCase();
}

export interface Loaded<S extends Specs> {
  values: Values<S>;
  sources: Record<keyof S, Source>;
}

export interface LoadInput {
  command: string;
  flags: RawFlags;
  env?: NodeJS.ProcessEnv;
  configFile?: string;
}

export function loadConfig<S extends Specs>(specs: S, input: LoadInput): Loaded<S> {
  const env = input.env ?? process.env;
  const fileValues = input.configFile ? readConfigFile(input.configFile, input.command, specs) : {};
  const values: Record<string, unknown> = {};
  const sources: Record<string, Source> = {};
  for (const [key, s] of Object.entries(specs)) {
    const flag = `--${flagName(key)}`;
    const fromFlag = input.flags[key];
    const envKey = env[envName(key)] !== undefined || !s.alsoEnv ? envName(key) : s.alsoEnv;
    const fromEnv = env[envKey];
    let raw: unknown;
    let source: Source;
    let where: string;
    if (fromFlag !== undefined) {
      [raw, source, where] = [fromFlag, 'flag', `flag ${flag}`];
    } else if (fromEnv !== undefined && fromEnv !== '') {
      [raw, source, where] = [fromEnv, 'env', `environment variable ${envKey}`];
    } else if (key in fileValues) {
      [raw, source, where] = [fileValues[key], 'config', `key "${flagName(key)}" in ${input.configFile}`];
    } else {
      values[key] = s.default;
      sources[key] = 'default';
      continue;
    }
    const value = convert(s.kind, raw, where, flag);
    const problem = (s.check as Check<unknown> | undefined)?.(value);
    if (problem)
      throw new ConfigError(`invalid ${flag} value ${JSON.stringify(String(raw))} from ${where}: ${problem}`);
    values[key] = value;
    sources[key] = source;
  }
  return { values: values as Values<S>, sources: sources as Record<keyof S, Source> };
}

function convert(kind: Kind, raw: unknown, where: string, flag: string): unknown {
  const bad = (want: string) =>
    new ConfigError(`invalid ${flag} value ${JSON.stringify(raw)} from ${where}: want ${want}`);
  switch (kind) {
    case 'string':
      if (typeof raw === 'string' || typeof raw === 'number') return String(raw);
      throw bad('a string');
    case 'int': {
      const n =
        typeof raw === 'number' ? raw : typeof raw === 'string' && /^-?\d+$/.test(raw.trim()) ? Number(raw) : NaN;
      if (!Number.isSafeInteger(n)) throw bad('an integer');
      return n;
    }
    case 'bool':
      if (typeof raw === 'boolean') return raw;
      if (typeof raw === 'string' && /^(true|1|yes)$/i.test(raw)) return true;
      if (typeof raw === 'string' && /^(false|0|no)$/i.test(raw)) return false;
      throw bad('true or false');
    case 'duration': {
      const ms = typeof raw === 'string' ? parseDuration(raw) : undefined;
      if (ms === undefined) throw bad('a duration such as 30s, 1m or 500ms');
      return ms;
    }
    case 'size': {
      const bytes = typeof raw === 'number' ? raw : typeof raw === 'string' ? parseSize(raw) : undefined;
      if (bytes === undefined || !Number.isSafeInteger(bytes) || bytes < 0)
        throw bad('a size such as 64Mi, 200M or 512Ki');
      return bytes;
    }
  }
}

/** Top-level keys apply to the command that knows them; a section named after the command overrides them. */
function readConfigFile(path: string, command: string, specs: Specs): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(path, 'utf8'));
  } catch (err) {
    const why =
      (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message.split('\n')[0];
    throw new ConfigError(`cannot read config file ${path}: ${why} (fix the file or drop --config)`);
  }
  if (doc == null) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ConfigError(`config file ${path} must be a YAML mapping of option names to values`);
  }
  const known = new Map(Object.keys(specs).map((k) => [flagName(k), k]));
  const out: Record<string, unknown> = {};
  const take = (obj: Record<string, unknown>, section: string) => {
    for (const [name, value] of Object.entries(obj)) {
      if (SUBCOMMANDS.includes(name) && section === '') continue;
      const key = known.get(name) ?? known.get(flagName(name));
      if (key) out[key] = value;
      else if (section !== '' || !ALL_OPTION_NAMES.has(name)) {
        throw new ConfigError(
          `unknown option "${name}"${section ? ` in section "${section}"` : ''} of config file ${path} (see: tower ` +
            `${command} --help)`,
        );
      }
    }
  };
  const root = doc as Record<string, unknown>;
  take(root, '');
  const own = root[command];
  if (own != null) {
    if (typeof own !== 'object' || Array.isArray(own))
      throw new ConfigError(`section "${command}" of config file ${path} must be a mapping`);
    take(own as Record<string, unknown>, command);
  }
  return out;
}

const SUBCOMMANDS = ['proxy', 'agent', 'token', 'kubeconfig', 'clusters', 'delete', 'version', 'install'];
/** Names any subcommand knows: a shared file may carry options for several commands at the top. */
const ALL_OPTION_NAMES = new Set<string>();
export function registerOptionNames(specs: Specs): void {
  for (const k of Object.keys(specs)) ALL_OPTION_NAMES.add(flagName(k));
}

/** One line per option with its value and where it came from, for `-v 2`; secrets are masked. */
export function describeSources<S extends Specs>(specs: S, loaded: Loaded<S>, secret: (keyof S)[] = []): string[] {
  return Object.keys(specs).map((key) => {
    let v = (loaded.values as Record<string, unknown>)[key];
    if (v !== undefined && secret.includes(key)) v = '<redacted>';
    if (specs[key]!.kind === 'duration' && typeof v === 'number') v = formatDuration(v);
    if (specs[key]!.kind === 'size' && typeof v === 'number') v = formatSize(v);
    return `--${flagName(key)}=${v === undefined ? '' : String(v)} (${loaded.sources[key as keyof S]})`;
  });
}
