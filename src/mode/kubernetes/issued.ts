import { NotFoundError, StoreError, TowerError } from '../../errors.ts';
import type { Cluster, IssuedByProxy } from '../mode.ts';
import { fromResource, type KubernetesClusters } from './clusters.ts';
import { notOurs } from './resource.ts';

/**
 * A Cluster resource of type proxy is a request: the proxy fills in its token, ports and Service,
 * and writes its kubeconfig once an agent has connected. Commands create it and wait.
 */
export class ClusterRequests implements IssuedByProxy {
  readonly server: string;
  #clusters: KubernetesClusters;

  constructor(clusters: KubernetesClusters, server: string) {
    this.#clusters = clusters;
    this.server = server;
  }

  async request(name: string): Promise<{ note: string; cluster?: Cluster }> {
    const location = this.#clusters.location;
    const resource = await this.#clusters.resource(name);
    if (!resource) {
      try {
        await this.#clusters.create(name, '');
        return { note: `created Cluster "${name}" (type proxy) in ${location}` };
      } catch (err) {
        if (!(err instanceof StoreError && err.code === 'EEXIST')) throw err;
        return { note: `Cluster "${name}" already exists in ${location}` };
      }
    }
    const why = notOurs(resource);
    if (why)
      throw new TowerError(
        'ENOTPROXY',
        `Cluster "${name}" exists, but ${why}; tower serves only proxy clusters ` +
          `(fix: kubectl patch cluster ${name} --type merge ` +
          `-p '{"spec":{"joinFederation":true,"connection":{"type":"proxy"}}}')`,
      );
    return { note: `Cluster "${name}" already exists in ${location}`, cluster: fromResource(resource) };
  }

  async requested(name: string): Promise<boolean> {
    return (await this.#clusters.resource(name)) !== undefined;
  }

  /** Once the Cluster has a token and is Initialized. */
  async issued(name: string): Promise<Cluster | undefined> {
    const resource = await this.#clusters.resource(name);
    if (!resource) throw new NotFoundError(`Cluster "${name}" was deleted while waiting`);
    const token = resource.spec?.connection?.token;
    const ready = resource.status?.conditions?.some((c) => c.type === 'Initialized' && c.status === 'True');
    return token && ready
      ? {
          name,
          token,
          createdAt: String(resource.metadata.creationTimestamp ?? ''),
          revision: resource.metadata.resourceVersion ?? '',
        }
      : undefined;
  }

  /** spec.connection.kubeconfig, once the proxy has written it for a connected agent. */
  async kubeconfig(name: string): Promise<string | undefined> {
    const c = await this.#clusters.resource(name);
    if (!c) throw new NotFoundError(`Cluster "${name}" was deleted while waiting`);
    const agent = c.status?.conditions?.find((x) => x.type === 'AgentAvailable')?.status === 'True';
    const b64 = c.spec?.connection?.kubeconfig;
    return agent && b64 ? Buffer.from(b64, 'base64').toString('utf8') : undefined;
  }
}
