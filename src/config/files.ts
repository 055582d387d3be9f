import { constants, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
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

/** What readRegularFile found: the text, no file, or why it will not be read. */
export type RegularFileRead = { text: string } | { missing: true } | { problem: string };

/**
 * The text of the regular file at `path`, of at most `maxBytes`. A FIFO would block the read (and
 * a thread of Node's pool) for ever: it is opened without waiting, and read only when it is a
 * regular file of a size that makes sense.
 */
export async function readRegularFile(path: string, maxBytes: number): Promise<RegularFileRead> {
  try {
    const handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const st = await handle.stat();
      if (st.isDirectory()) return { problem: 'cannot be read: EISDIR' };
      if (!st.isFile()) return { problem: 'is not a regular file' };
      if (st.size > maxBytes) return { problem: `holds ${st.size} bytes, more than ${maxBytes}` };
      return { text: await handle.readFile('utf8') };
    } finally {
      await handle.close();
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { missing: true };
    return { problem: `cannot be read: ${code ?? (err as Error).message}` };
  }
}
