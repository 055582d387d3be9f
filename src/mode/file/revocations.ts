import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { StoreError } from '../../errors.ts';
import { parseRevocations, revocationsDocument, type Revocation, type RevocationList } from '../../pki/revocations.ts';
import type { RevocationRecords } from '../mode.ts';
import type { DataDir } from './data-dir.ts';

const FILE = 'revocations.yaml';
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
    const read = await this.#data.readYaml(this.#path);
    if (read.missing) return { revocations: [] };
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
