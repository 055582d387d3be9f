// apart from memory.ts, which every long-running command loads at start: prom-client only with the metrics
import { Gauge, type Registry } from 'prom-client';
import { towerNative } from '../native/index.ts';

/**
 * tower_malloc_in_use_bytes: what native code (TLS, zlib, the SSH binding, Node's own) holds from malloc,
 * without the pages malloc keeps free for later, which RSS counts too: a native leak grows it, a burst
 * does not. Absent where tower's native part did not load or glibc is older than 2.33.
 */
export function registerMallocInUse(register: Registry): void {
  const loaded = towerNative();
  if ('problem' in loaded || loaded.native.mallocInUse() < 0) return;
  const read = loaded.native.mallocInUse;
  new Gauge({
    name: 'tower_malloc_in_use_bytes',
    help: 'Bytes native code holds from malloc (glibc mallinfo2), without what malloc keeps free',
    registers: [register],
    collect() {
      this.set(read());
    },
  });
}
