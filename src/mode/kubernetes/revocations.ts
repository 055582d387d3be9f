import type { V1ConfigMap } from '@kubernetes/client-node';
import { stringify as toYaml } from 'yaml';
import { ConflictError, StoreError, TowerError } from '../../errors.ts';
import {
  parseRevocationsText,
  revocationsDocument,
  type Revocation,
  type RevocationList,
} from '../../pki/revocations.ts';
import type { RevocationRecords } from '../mode.ts';
import type { HostCluster } from './api.ts';
import { apiError, apiStatus, orUndefined } from './api-errors.ts';
import { NAMESPACE, PROXY_OWNED_LABELS, REVOCATIONS_CONFIGMAP } from './resource.ts';

const KEY = 'revocations.yaml';
/** writers that raced: each reads again and appends again */
const WRITE_ATTEMPTS = 5;

/** ConfigMap kubesphere-system/tower-revocations, key revocations.yaml; the proxy's Role may only read it. */
export class KubernetesRevocations implements RevocationRecords {
  readonly location = `ConfigMap ${NAMESPACE}/${REVOCATIONS_CONFIGMAP}`;
  #host: HostCluster;

  constructor(host: HostCluster) {
    this.#host = host;
  }

  async read(): Promise<RevocationList | string> {
    const cm = await this.#get();
    return cm ? this.#parse(cm) : { revocations: [] };
  }

  async add(r: Revocation): Promise<RevocationList> {
    const core = this.#host.core;
    for (let attempt = 1; ; attempt++) {
      try {
        const cm = await this.#get();
        const list = cm ? this.#parse(cm) : { revocations: [] };
        if (typeof list === 'string') throw new StoreError('EUNUSABLE', `${list}; fix or delete it, then revoke again`);
        const next = { revocations: [...list.revocations, r] };
        const data = { [KEY]: toYaml(revocationsDocument(next)) };
        if (!cm) {
          const body: V1ConfigMap = {
            metadata: {
              name: REVOCATIONS_CONFIGMAP,
              namespace: NAMESPACE,
              labels: { 'app.kubernetes.io/name': 'tower', ...PROXY_OWNED_LABELS },
              annotations: { 'tower.kubesphere.io/written-by': 'tower revoke' },
            },
            data,
          };
          await core.createNamespacedConfigMap({ namespace: NAMESPACE, body });
        } else {
          // the resourceVersion read makes a concurrent writer's update fail (409) rather than be lost
          await core.replaceNamespacedConfigMap({
            name: REVOCATIONS_CONFIGMAP,
            namespace: NAMESPACE,
            body: { ...cm, data: { ...cm.data, ...data } },
          });
        }
        return next;
      } catch (err) {
        if (err instanceof TowerError) throw err;
        if (apiStatus(err) === 409 && attempt < WRITE_ATTEMPTS) continue;
        if (apiStatus(err) === 409)
          throw new ConflictError(`${this.location} kept changing while tower revoke wrote it; run it again`);
        if (apiStatus(err) === 404) await this.#host.requireNamespace();
        throw apiError(`writing ${this.location}`, this.#host.server, err);
      }
    }
  }

  async #get(): Promise<V1ConfigMap | undefined> {
    try {
      return await orUndefined(
        this.#host.core.readNamespacedConfigMap({ name: REVOCATIONS_CONFIGMAP, namespace: NAMESPACE }),
      );
    } catch (err) {
      throw apiError(`reading ${this.location}`, this.#host.server, err);
    }
  }

  #parse(cm: V1ConfigMap): RevocationList | string {
    const text = cm.data?.[KEY];
    if (text === undefined) return `${this.location} has no key ${KEY}`;
    return parseRevocationsText(text, this.location);
  }
}
