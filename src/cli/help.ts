import { formatDuration } from '../config/duration.ts';
import { formatSize } from '../config/size.ts';
import { flagName, type OptionSpec, type Specs } from '../config/loader.ts';
import { COMMON } from '../config/options.ts';
import type { CommandDoc, TowerCommand } from './base.ts';

/** A registered command class, as help and the argument check see it. */
export interface CommandEntry {
  path: string[];
  cls: typeof TowerCommand & { paths: string[][] };
}

const WIDTH = 100;

function wrap(text: string, indent: string): string {
  const out: string[] = [];
  for (const paragraph of text.split('\n')) {
    let line = indent;
    for (const word of paragraph.split(/\s+/).filter(Boolean)) {
      if (line.length + word.length + 1 > WIDTH && line.trim()) {
        out.push(line.trimEnd());
        line = indent;
      }
      line += (line.trim() ? ' ' : '') + word;
    }
    out.push(line.trimEnd());
  }
  return out.join('\n');
}

/** The default as --help and the README show it: a constant, or what it is when it is not one. */
export function defaultText(spec: OptionSpec): string | undefined {
  if (spec.default === undefined) return spec.defaultText;
  if (spec.kind === 'duration') return formatDuration(spec.default);
  if (spec.kind === 'size') return formatSize(spec.default);
  return String(spec.default);
}

/** `--port PORT`, `--leader-elect, --no-leader-elect`, `-o, --output FORMAT` */
export function flagUsage(key: string, spec: OptionSpec): string {
  const long = `--${flagName(key)}`;
  const names = spec.kind === 'bool' ? `${long}, --no-${flagName(key)}` : long;
  const short = spec.short ? `-${spec.short}, ` : '';
  return `${short}${names}${spec.kind === 'bool' ? '' : ` ${spec.value}`}`;
}

function flagLines(specs: Specs): string {
  return Object.entries(specs)
    .map(([key, spec]) => {
      const d = defaultText(spec);
      return `  ${flagUsage(key, spec)}${d !== undefined ? ` (default ${d})` : ''}\n${wrap(spec.help, '        ')}`;
    })
    .join('\n');
}

/** `tower <command> --help` */
export function commandHelp(entry: CommandEntry): string {
  const doc: CommandDoc = entry.cls.doc;
  const own = Object.fromEntries(Object.entries(entry.cls.options).filter(([k]) => !(k in COMMON)));
  const parts = [`tower ${entry.path.join(' ')}: ${doc.summary}`, `Usage:\n  tower ${doc.usage} [flags]`];
  if (doc.details) parts.push(wrap(doc.details, ''));
  if (Object.keys(own).length) parts.push(`Flags:\n${flagLines(own)}`);
  parts.push(`Flags of every command:\n${flagLines(COMMON)}`);
  parts.push(
    wrap(
      'Every flag can also be given as an environment variable, TOWER_ and the flag name in upper case with ' +
        'underscores (TOWER_GATEWAY_PORT), or as a key of the --config file. Precedence: flag, environment, file, ' +
        'default. A boolean flag is a switch: --name sets it, --no-name clears it.',
      '',
    ),
  );
  if (doc.examples?.length)
    parts.push(`Examples:\n${doc.examples.map(([what, cmd]) => `  # ${what}\n  ${cmd}`).join('\n\n')}`);
  return parts.join('\n\n') + '\n';
}

/** `tower`, `tower help`, `tower --help` */
export function overview(entries: CommandEntry[]): string {
  const width = Math.max(...entries.map((e) => e.path.join(' ').length));
  const lines = entries.map((e) => `  ${e.path.join(' ').padEnd(width)}  ${e.cls.doc.summary}`);
  return (
    [
      'tower: reach the kube-apiservers of member clusters through agents that dial out',
      `Usage:\n  tower COMMAND [flags]\n\nCommands:\n${lines.join('\n')}`,
      "Run `tower help COMMAND` or `tower COMMAND --help` for a command's flags.",
      'Quick start:\n' +
        '  tower proxy\n' +
        "  tower token alpha              # prints the agent's join command\n" +
        '  tower agent --name alpha --token ... --proxy-server ... --proxy-fingerprint ... ' +
        '--kubeconfig member.kubeconfig\n' +
        '  tower kubeconfig alpha > alpha.kubeconfig',
    ].join('\n\n') + '\n'
  );
}

function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length]![b.length]!;
}

/** the nearest of `candidates` to `word`, when it is near enough to be a likely typo */
export function nearest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = c.startsWith(word) || word.startsWith(c) ? Math.abs(c.length - word.length) / 2 : distance(word, c);
    if (d < bestD) {
      best = c;
      bestD = d;
    }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}

/** Go-style `--switch=true|false` becomes `--switch` or `--no-switch`, as clipanion takes them. */
export function normalizeSwitches(args: string[], specs: Specs): string[] | string {
  const known = flagTable(specs);
  const out: string[] = [];
  for (const a of args) {
    const m = /^--([a-z0-9-]+)=(.*)$/.exec(a);
    if (!m || known.get(`--${m[1]}`)?.kind !== 'bool' || m[1]!.startsWith('no-')) {
      out.push(a);
      continue;
    }
    if (/^(true|1|yes)$/i.test(m[2]!)) out.push(`--${m[1]}`);
    else if (/^(false|0|no)$/i.test(m[2]!)) out.push(`--no-${m[1]}`);
    else return `invalid --${m[1]} value ${JSON.stringify(m[2])}: it is a switch; give --${m[1]} or --no-${m[1]}`;
  }
  return out;
}

/** every name a command's flags answer to: --name, -n, and --no-name for a switch */
function flagTable(specs: Specs): Map<string, OptionSpec> {
  const known = new Map<string, OptionSpec>();
  for (const [key, spec] of Object.entries(specs)) {
    known.set(`--${flagName(key)}`, spec);
    if (spec.short) known.set(`-${spec.short}`, spec);
    if (spec.kind === 'bool') known.set(`--no-${flagName(key)}`, spec);
  }
  return known;
}

/**
 * One pass over a command's arguments: the first flag it does not know, as a one-line error with
 * the nearest valid one, and the arguments that are neither flags nor their values. `--` ends the flags.
 */
export function scanArgs(args: string[], specs: Specs): { unknown?: string; positionals: string[] } {
  const known = flagTable(specs);
  const positionals: string[] = [];
  let unknown: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (!a.startsWith('-') || a === '-') {
      positionals.push(a);
      continue;
    }
    const name = a.split('=')[0]!;
    const spec = known.get(name);
    if (!spec) {
      if (unknown === undefined) {
        const near = nearest(
          name,
          [...known.keys()].filter((k) => k.startsWith('--')),
        );
        unknown = `unknown flag ${name}${near ? `; did you mean ${near}?` : ''}`;
      }
      continue;
    }
    if (spec.kind !== 'bool' && !a.includes('=')) i++;
  }
  return { unknown, positionals };
}
