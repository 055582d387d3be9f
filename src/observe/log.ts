/** Leveled logs to stderr: text for people, JSON lines for collectors. `-v N` raises verbosity as klog does. */
export type LogFormat = 'text' | 'json';
export type Fields = Record<string, unknown>;

type Level = 'error' | 'warn' | 'info' | 'debug';
interface Settings {
  verbosity: number;
  format: LogFormat;
}

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

  error(msg: string, fields?: Fields): void {
    this.#write('error', msg, fields);
  }
  warn(msg: string, fields?: Fields): void {
    this.#write('warn', msg, fields);
  }
  info(msg: string, fields?: Fields): void {
    this.#write('info', msg, fields);
  }
  /** Debug output at verbosity `v` (1 = lifecycle details, 2 = config sources, 4 = per request). */
  debug(v: number, msg: string, fields?: Fields): void {
    if (this.enabled(v)) this.#write('debug', msg, fields);
  }

  #write(level: Level, msg: string, fields?: Fields): void {
    const all = { ...this.#base, ...fields };
    let line: string;
    if (this.#settings.format === 'json') {
      const clipped: Fields = {};
      for (const [k, v] of Object.entries(all))
        clipped[k] = typeof v === 'string' ? truncate(v) : v instanceof Error ? truncate(v.message) : v;
      line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...clipped });
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

/**
 * What strangers can make happen thousands of times a second (refused connections): said once as it
 * happens, then as one count per window while it goes on, so that a crowd of agents redialing after
 * an outage does not bury the log. The metrics still count every one.
 */
export class RepeatedEvents {
  #windowMs: number;
  #open = new Map<string, { count: number; timer: NodeJS.Timeout }>();

  /** a count at most this often: a flood must not flood the log too */
  constructor(windowMs = 10_000) {
    this.#windowMs = windowMs;
  }

  /** `first` now, when no window of `key` is open; else counted, and `summary(count)` when its window ends */
  note(key: string, first: () => void, summary: (count: number, windowSeconds: number) => void): void {
    const open = this.#open.get(key);
    if (open) {
      open.count++;
      return;
    }
    first();
    this.#arm(key, summary);
  }

  #arm(key: string, summary: (count: number, windowSeconds: number) => void): void {
    const w = {
      count: 0,
      timer: setTimeout(() => {
        this.#open.delete(key);
        if (w.count === 0) return;
        summary(w.count, this.#windowMs / 1000);
        // still going on: the next ones are counted, not said one by one
        this.#arm(key, summary);
      }, this.#windowMs),
    };
    w.timer.unref();
    this.#open.set(key, w);
  }

  close(): void {
    for (const w of this.#open.values()) clearTimeout(w.timer);
    this.#open.clear();
  }
}

/** values from peers (names, paths, error texts) are cut here, so one cannot flood or forge log lines */
export const MAX_FIELD_CHARS = 512;

function formatValue(v: unknown): string {
  if (typeof v === 'string') {
    const s = escapeControls(truncate(v));
    return /[\s"=]/.test(s) || s === '' || s !== v ? `"${s.replace(/"/g, '\\"')}"` : s;
  }
  if (v instanceof Error) return formatValue(v.message);
  return typeof v === 'object' ? escapeControls(truncate(JSON.stringify(v) ?? '')) : String(v);
}

/** At most MAX_FIELD_CHARS characters, saying how many were cut. */
export function truncate(s: string): string {
  return s.length > MAX_FIELD_CHARS ? `${s.slice(0, MAX_FIELD_CHARS)}…(${s.length - MAX_FIELD_CHARS} more)` : s;
}

/** Text from a peer, made safe to print: at most MAX_FIELD_CHARS, control characters escaped. */
export function printable(s: string): string {
  return escapeControls(truncate(s));
}

/** Backslashes and control characters (terminal escapes among them) escaped, so a value stays on its line and inert. */
function escapeControls(s: string): string {
  return s.replace(/[\\\x00-\x1f\x7f-\x9f]/g, (c) =>
    c === '\\' ? '\\\\' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );
}

export const log = new Logger();
