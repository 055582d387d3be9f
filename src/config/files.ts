import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.ts';

/** The file at `path`; a ConfigError naming `what` it was for and why it cannot be read otherwise. */
export function readFileOrExplain(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError(
      `cannot read ${what} at ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
}
