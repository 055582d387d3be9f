import { closeSync, constants, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { StoreError } from '../../errors.ts';
import type { Closer, Mode } from '../mode.ts';
import { FileClusters } from './clusters.ts';
import { DataDir, pidAlive } from './data-dir.ts';
import { FileKeys } from './keys.ts';
import { FileProxyRecord } from './proxy-record.ts';
import { FileRevocations } from './revocations.ts';

/**
 * The file mode, the embedded default: plain files under the data dir, served by one proxy
 * (proxy.lock), written beside it by the commands.
 */
export class FileMode implements Mode {
  readonly clusters: FileClusters;
  readonly keys: FileKeys;
  readonly proxyRecord: FileProxyRecord;
  readonly revocations: FileRevocations;
  #data: DataDir;

  constructor(dir: string) {
    this.#data = new DataDir(dir);
    this.clusters = new FileClusters(this.#data);
    this.keys = new FileKeys(this.#data);
    this.proxyRecord = new FileProxyRecord(this.#data, this.clusters);
    this.revocations = new FileRevocations(this.#data);
  }

  async claim(): Promise<Closer> {
    const path = join(this.#data.dir, 'proxy.lock');
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
        writeSync(fd, String(process.pid));
        closeSync(fd);
        return { close: () => rmSync(path, { force: true }) };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const holder = Number(readFileSync(path, 'utf8'));
        // a holder with our own pid is a previous life of this container (pid 1 again)
        if (holder !== process.pid && pidAlive(holder)) {
          throw new StoreError(
            'EBUSY',
            `another proxy (pid ${holder}) serves ${this.#data.location}; stop it, or give this one its own --data-dir`,
          );
        }
        rmSync(path, { force: true }); // left by a proxy that died
      }
    }
    throw new StoreError('EBUSY', `cannot claim ${path}`);
  }

  close(): void {
    this.clusters.close();
  }
}
