import { setFlagsFromString } from 'node:v8';

/**
 * How V8 collects in every tower process, set before anything else runs; with `--single-threaded-gc`
 * and `--max-semi-space-size=2`, which the build bakes into the executable (scripts/build.mjs).
 *
 * A relay's garbage is mostly ArrayBuffers, a fresh one for every TLS read and SSH packet, and V8
 * starts a full collection each time external memory grows by its soft limit (64 MiB). Handed to V8's
 * worker threads, those collections cost more than they saved on cores the relays already share:
 * on the main thread alone the bulk took a quarter less CPU per GiB. Left incremental there, the
 * buffers waited longer to be freed and the bulk peak rose by 40 MiB; atomic, each collection frees
 * at once, and the peak fell below what it was (docs/benchmarks.md has the runs).
 *
 * Set here rather than baked in with the others: this flag is part of what V8 checks before it takes
 * the executable's code cache, which the build makes without it.
 */
setFlagsFromString('--no-incremental-marking');
