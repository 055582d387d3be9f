import { setTimeout as sleep } from 'node:timers/promises';
import { TowerError } from '../errors.ts';
import { formatDuration } from '../config/duration.ts';

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const POLL_MS = 500;

/**
 * Polls `check` until it returns a value, showing `what` on stderr: a spinner on a terminal, one
 * line otherwise. Fails after `timeoutMs` with `onTimeout`'s message.
 */
export async function waitWithProgress<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs: number,
  onTimeout: string,
): Promise<T> {
  const tty = process.stderr.isTTY;
  const started = Date.now();
  let frame = 0;
  if (!tty) process.stderr.write(`${what} …\n`);
  try {
    for (;;) {
      const v = await check();
      if (v !== undefined) return v;
      const waited = Date.now() - started;
      if (waited >= timeoutMs)
        throw new TowerError('ETIMEDOUT', `${onTimeout} (waited ${formatDuration(timeoutMs)}; more with --timeout)`);
      if (tty)
        process.stderr.write(`\r${FRAMES[frame++ % FRAMES.length]} ${what} (${Math.floor(waited / 1000)} s)\x1b[K`);
      await sleep(POLL_MS);
    }
  } finally {
    if (tty) process.stderr.write('\r\x1b[K');
  }
}
