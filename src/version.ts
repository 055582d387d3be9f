// Replaced at bundle time by scripts/build.mjs; the fallback serves tests that import sources.
declare const __TOWER_VERSION__: string | undefined;

export const VERSION: string = typeof __TOWER_VERSION__ === 'string' ? __TOWER_VERSION__ : '0.0.0-dev';
