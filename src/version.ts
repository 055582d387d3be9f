// Replaced at bundle time by scripts/build.mjs; the fallbacks serve tests that import sources.
declare const __TOWER_VERSION__: string | undefined;
declare const __TOWER_COMMIT__: string | undefined;

export const VERSION: string = typeof __TOWER_VERSION__ === 'string' ? __TOWER_VERSION__ : '0.0.0-dev';
export const COMMIT: string = typeof __TOWER_COMMIT__ === 'string' ? __TOWER_COMMIT__ : 'unknown';
