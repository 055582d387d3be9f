import { constants } from 'node:fs';
import { lstat, open } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { StoreError } from '../../errors.ts';
import {
  parseRevocationsText,
  revocationsDocument,
  type Revocation,
  type RevocationList,
} from '../../pki/revocations.ts';
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
    // anyone who can write the data dir can put something else here: a FIFO would block the read (and a
    // thread of the pool) for ever, a huge file the memory, a dangling link would read as "nothing revoked"
    let text: string;
    try {
      const link = await lstat(this.#path).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      });
      if (!link) return { revocations: [] };
      const handle = await open(this.#path, constants.O_RDONLY | constants.O_NONBLOCK);
      try {
        const st = await handle.stat();
        if (!st.isFile()) return `${this.location} is not a regular file`;
        if (st.size > MAX_BYTES) return `${this.location} holds ${st.size} bytes, more than ${MAX_BYTES}`;
        text = await handle.readFile('utf8');
      } finally {
        await handle.close();
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return `${this.location} cannot be read: ${code === 'ENOENT' ? 'a link to nothing' : (code ?? String(err))}`;
    }
    return parseRevocationsText(text, this.location);
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
