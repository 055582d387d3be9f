import type { V1Secret } from '@kubernetes/client-node';
import { TowerError } from '../../errors.ts';
import type { KeyMaterial, KeyMaterialKind, KeyStore } from '../../pki/keys.ts';
import { apiError, apiStatus, orUndefined, type HostCluster } from './api.ts';
import { NAMESPACE, PROXY_OWNED_LABELS } from './resource.ts';

const SECRETS: Record<KeyMaterialKind, string> = { ca: 'tower-ca', 'ssh-host-key': 'tower-ssh-host-key' };

/** tower's CA and the proxy's host key as Secrets tower-ca and tower-ssh-host-key in kubesphere-system. */
export class SecretKeys implements KeyStore {
  readonly location: string;
  #host: HostCluster;

  constructor(host: HostCluster, location: string) {
    this.#host = host;
    this.location = location;
  }

  /** Created once; a creation race is settled by the API (409). */
  async loadOrCreate(kind: KeyMaterialKind, create: () => Promise<KeyMaterial>): Promise<KeyMaterial> {
    const core = this.#host.core;
    const name = SECRETS[kind];
    const read = async () => {
      const s = await orUndefined(core.readNamespacedSecret({ name, namespace: NAMESPACE }));
      if (!s) return undefined;
      return Object.fromEntries(
        Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]),
      );
    };
    try {
      const existing = await read();
      if (existing) return existing;
      const made = await create();
      const body: V1Secret = {
        metadata: { name, namespace: NAMESPACE, labels: { 'app.kubernetes.io/name': 'tower', ...PROXY_OWNED_LABELS } },
        type: 'Opaque',
        data: Object.fromEntries(Object.entries(made).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
      };
      try {
        await core.createNamespacedSecret({ namespace: NAMESPACE, body });
        return made;
      } catch (err) {
        if (apiStatus(err) !== 409) throw err;
        return (await read())!;
      }
    } catch (err) {
      if (err instanceof TowerError) throw err;
      if (apiStatus(err) === 404) await this.#host.requireNamespace();
      throw apiError(`reading or creating Secret ${NAMESPACE}/${name}`, this.#host.server, err);
    }
  }
}
