import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { StoreError } from '../../errors.ts';
import { parseRevocations, revocationsDocument, type Revocation, type RevocationList } from '../../pki/revocations.ts';
import type { RevocationRecords } from '../mode.ts';
import type { DataDir } from './data-dir.ts';

const FILE = 'revocations.yaml';
/** far more than 10 000 entries take: a bigger file is not a list anyone keeps */
const MAX_BYTES = 4 * 2 ** 20;
const HEADER = '# written by tower revoke; every proxy reads it within seconds\n';

/** revocations.yaml in the data dir, written under the data dir's lock. */
export class FileRevocations implements RevocationRecords {
  readonly location: string;
  #data: DataDir;
  #path: string;

  constructor(data: DataDir) {
    this.#data = data;
    this.#path = join(data.dir, FILE);
    this.location = `${data.location}/${FILE}`;
  }

  async read(): Promise<RevocationList | string> {
    // a link to nothing would read as "nothing revoked": only a list that is not there at all is empty
    const there = await lstat(this.#path).then(
      () => true,
      (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? false : Promise.reject(err)),
    );
    if (!there) return { revocations: [] };
    const read = await this.#data.readYaml(this.#path, MAX_BYTES);
    if (read.missing) return `${this.location} cannot be read: a link to nothing`;
    if (read.problem) return `${this.location} ${read.problem}`;
    const list = parseRevocations(read.doc);
    return typeof list === 'string' ? `${this.location} ${list}` : list;
  }

  add(r: Revocation): Promise<RevocationList> {
    return this.#data.locked(async () => {
      const list = await this.read();
      if (typeof list === 'string') throw new StoreError('EUNUSABLE', `${list}; fix or remove it, then revoke again`);
      const next = { revocations: [...list.revocations, r] };
      this.#data.writeFile(this.#path, HEADER + toYaml(revocationsDocument(next)), false);
      return next;
    });
  }
}
