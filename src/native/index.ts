/**
 * tower's own native part (./tower.cc): what tower needs from the C library and Node does not expose.
 * The binary carries it as the SEA asset tower.node (scripts/build.mjs) and loads it on first use. Where
 * it cannot (run from source, a build without a compiler, no writable place that allows executables)
 * tower runs without it, and `towerNative()` says why.
 */
import { loadEmbeddedAddon } from './embedded.ts';

export interface TowerNative {
  /** glibc's malloc_trim(0): hands the pages freed in the middle of malloc's heap back; whether any were */
  trimMalloc(): boolean;
  /** glibc's mallinfo2: the bytes malloc has handed out and not had back; -1 where glibc is older than 2.33 */
  mallocInUse(): number;
  /** names the calling thread (prctl PR_SET_NAME; at most 15 bytes): the main thread's is the process's name */
  nameThread(name: string): boolean;
}

let loaded: { native: TowerNative } | { problem: string } | undefined;

/** The native functions, or why they are not available here; loaded once, on the first call. */
export function towerNative(): { native: TowerNative } | { problem: string } {
  loaded ??= load();
  return loaded;
}

function load(): { native: TowerNative } | { problem: string } {
  const addon = loadEmbeddedAddon('tower.node');
  if ('missing' in addon) return { problem: addon.missing };
  if ('problem' in addon) return { problem: `tower.node could not be written and loaded (${addon.problem})` };
  const { trimMalloc, mallocInUse, nameThread } = addon.exports;
  if (typeof trimMalloc !== 'function' || typeof mallocInUse !== 'function' || typeof nameThread !== 'function')
    return { problem: 'tower.node lacks trimMalloc, mallocInUse or nameThread' };
  return {
    native: {
      trimMalloc: trimMalloc as () => boolean,
      mallocInUse: mallocInUse as () => number,
      nameThread: nameThread as (name: string) => boolean,
    },
  };
}

/**
 * Gives the process the name "tower" in ps, top and pidof, which otherwise show Node's name for its main
 * thread, "MainThread". The command line (/proc/PID/cmdline) is left as it was. Nothing where tower's
 * native part did not load.
 */
export function nameProcess(): void {
  const loaded = towerNative();
  if ('native' in loaded) loaded.native.nameThread('tower');
}
