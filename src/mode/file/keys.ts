import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { StoreError } from '../../errors.ts';
import type { KeyMaterial, KeyMaterialKind, KeyStore } from '../../pki/keys.ts';
import { DataDir, exists } from './data-dir.ts';

const KEY_FILES: Record<KeyMaterialKind, string[]> = { ca: ['ca.crt', 'ca.key'], 'ssh-host-key': ['ssh_host_key'] };
const PUBLIC_FILES = new Set(['ca.crt']);

/** tower's CA (ca.crt, ca.key) and the proxy's host key (ssh_host_key), files in the data dir. */
export class FileKeys implements KeyStore {
  readonly location: string;
  #data: DataDir;

  constructor(dir: string | DataDir) {
    this.#data = typeof dir === 'string' ? new DataDir(dir) : dir;
    this.location = this.#data.location;
  }

  async loadOrCreate(kind: KeyMaterialKind, create: () => Promise<KeyMaterial>): Promise<KeyMaterial> {
    const dir = this.#data.dir;
    const files = KEY_FILES[kind];
    const read = () => {
      const present = files.filter((f) => exists(join(dir, f)));
      if (present.length === 0) return undefined;
      if (present.length !== files.length) {
        const missing = files.filter((f) => !present.includes(f));
        throw new StoreError(
          'EKEYMATERIAL',
          `${this.location} holds ${present.join(', ')} but not ${missing.join(', ')}; ` +
            'restore the missing file or remove the others to start afresh',
        );
      }
      return Object.fromEntries(files.map((f) => [f, readFileSync(join(dir, f), 'utf8')]));
    };
    const existing = read();
    if (existing) return existing;
    return this.#data.locked(async () => {
      const again = read();
      if (again) return again;
      const made = await create();
      for (const f of files) {
        if (typeof made[f] !== 'string') throw new Error(`key material for ${kind} lacks ${f}`);
        this.#data.writeFile(join(dir, f), made[f]!, !PUBLIC_FILES.has(f));
      }
      return made;
    });
  }
}
