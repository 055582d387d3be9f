import { performance } from 'node:perf_hooks';
import { towerNative } from '../native/index.ts';
import type { Logger } from './log.ts';

const TRIM_EVERY_MS = 30_000;
/** RSS grown by this much since the last trim (or the lowest seen since) calls for another one */
const TRIM_GROWTH_BYTES = 2 * 2 ** 20;

const mib = (b: number) => Number((b / 2 ** 20).toFixed(1));

/** the process's RSS in bytes, or undefined where it cannot be read (no /proc, as in a bare root filesystem) */
function rss(): number | undefined {
  try {
    return process.memoryUsage.rss();
  } catch {
    return undefined;
  }
}

/**
 * Hands back to the system the pages that glibc's malloc keeps after a burst: freed TLS connections
 * and buffers in the middle of its heap, which it never returns by itself (a proxy held 8.5 MiB so
 * after 200 watch streams had ended). Checked every 30 s; a trim walks every arena (about 6 ms of the
 * event loop), so it runs only when RSS has grown by 2 MiB since the last one. Nothing where tower's
 * native part (src/native) did not load, nor where RSS cannot be read.
 */
export function trimMemoryPeriodically(log: Logger): () => void {
  const first = rss();
  if (first === undefined) return () => {};
  const loaded = towerNative();
  if ('problem' in loaded) {
    log.debug(1, 'malloc trim not available', { reason: loaded.problem });
    return () => {};
  }
  const trim = loaded.native.trimMalloc;
  let floor = first;
  const timer = setInterval(() => {
    const before = rss();
    if (before === undefined) return;
    if (before - floor < TRIM_GROWTH_BYTES) {
      floor = Math.min(floor, before);
      return;
    }
    const t = performance.now();
    const released = trim();
    const ms = performance.now() - t;
    floor = rss() ?? before;
    if (log.enabled(3))
      log.debug(3, 'malloc trimmed', {
        released,
        ms: Number(ms.toFixed(2)),
        rssBeforeMiB: mib(before),
        rssAfterMiB: mib(floor),
        mallocInUseMiB: mib(loaded.native.mallocInUse()),
      });
  }, TRIM_EVERY_MS);
  timer.unref();
  return () => clearInterval(timer);
}
