/** Leveled logs to stderr: text for people, JSON lines for collectors. `-v N` raises verbosity as klog does. */
export type LogFormat = 'text' | 'json';
export type Fields = Record<string, unknown>;

type Level = 'error' | 'warn' | 'info' | 'debug';
interface Settings { verbosity: number; format: LogFormat }

export class Logger {
  // shared with every child, so that configure() on the root reaches them all
  #settings: Settings;
  #base: Fields;

  constructor(settings: Settings = { verbosity: 0, format: 'text' }, base: Fields = {}) {
    this.#settings = settings;
    this.#base = base;
  }

  configure(verbosity: number, format: LogFormat): void {
    this.#settings.verbosity = verbosity;
    this.#settings.format = format;
  }

  child(fields: Fields): Logger {
    return new Logger(this.#settings, { ...this.#base, ...fields });
  }

  enabled(v: number): boolean {
    return this.#settings.verbosity >= v;
  }

  error(msg: string, fields?: Fields): void { this.#write('error', msg, fields); }
  warn(msg: string, fields?: Fields): void { this.#write('warn', msg, fields); }
  info(msg: string, fields?: Fields): void { this.#write('info', msg, fields); }
  /** Debug output at verbosity `v` (1 = lifecycle details, 2 = config sources, 4 = per request). */
  debug(v: number, msg: string, fields?: Fields): void {
    if (this.enabled(v)) this.#write('debug', msg, fields);
  }

  #write(level: Level, msg: string, fields?: Fields): void {
    const all = { ...this.#base, ...fields };
    let line: string;
    if (this.#settings.format === 'json') {
      line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...all });
    } else {
      const kv = Object.entries(all)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${k}=${formatValue(v)}`)
        .join(' ');
      line = `${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} ${msg}${kv ? ' ' + kv : ''}`;
    }
    process.stderr.write(line + '\n');
  }
}

function formatValue(v: unknown): string {
  if (typeof v === 'string') return /[\s"=]/.test(v) || v === '' ? JSON.stringify(v) : v;
  if (v instanceof Error) return JSON.stringify(v.message);
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

export const log = new Logger();
