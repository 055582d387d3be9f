/**
 * What `tower uninstall` removes: every object carrying tower's labels (what `tower install` printed and what the
 * proxy made at run time), found by label, never the namespace or the Cluster CRD, which carry none.
 */
import { KubernetesObjectApi, type KubernetesObject } from '@kubernetes/client-node';
import { apiError, apiStatus } from './api-errors.ts';
import type { HostCluster } from './api.ts';
import {
  AGENT_OWNED_LABELS,
  AGENT_POLICY_CONFIGMAP,
  IDENTITY_SECRETS,
  REVOCATIONS_CONFIGMAP,
  NAMESPACE,
  PROXY_OWNED_LABELS,
} from './resource.ts';

/** the kinds tower creates; a version the cluster does not serve is skipped (policy/v1 before 1.21) */
const KINDS: { apiVersion: string; kind: string; namespaced: boolean }[] = [
  { apiVersion: 'apps/v1', kind: 'Deployment', namespaced: true },
  { apiVersion: 'v1', kind: 'Service', namespaced: true },
  { apiVersion: 'v1', kind: 'ServiceAccount', namespaced: true },
  { apiVersion: 'v1', kind: 'Secret', namespaced: true },
  { apiVersion: 'v1', kind: 'ConfigMap', namespaced: true },
  { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', namespaced: true },
  { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', namespaced: true },
  { apiVersion: 'policy/v1beta1', kind: 'PodDisruptionBudget', namespaced: true },
  { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', namespaced: true },
  { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'Role', namespaced: true },
  { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'RoleBinding', namespaced: true },
  { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', namespaced: false },
  { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', namespaced: false },
];

export type Part = 'proxy' | 'agent';

export interface Owned {
  apiVersion: string;
  kind: string;
  name: string;
  namespace?: string;
}

function selector(part: Part): string {
  const labels = part === 'proxy' ? PROXY_OWNED_LABELS : AGENT_OWNED_LABELS;
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
}

/**
 * tower's objects of `part` in the cluster; the CA, host key, revocation list and the member's policy (the
 * owner's, perhaps edited) only when purging
 */
export async function ownedObjects(host: HostCluster, part: Part, purge: boolean): Promise<Owned[]> {
  const api = KubernetesObjectApi.makeApiClient(host.kc);
  const found = new Map<string, Owned>();
  for (const k of KINDS) {
    let items: KubernetesObject[];
    try {
      const namespace = k.namespaced ? NAMESPACE : undefined;
      items = (
        await api.list(k.apiVersion, k.kind, namespace, undefined, undefined, undefined, undefined, selector(part))
      ).items;
    } catch (err) {
      // a group version the cluster does not serve (discovery finds no such kind) holds nothing of tower's
      if (apiStatus(err) === 404 || /Unrecognized API version and kind/.test(String(err))) continue;
      throw apiError(`listing ${k.kind}s`, host.server, err);
    }
    for (const o of items) {
      const name = o.metadata!.name!;
      // a label anyone who may patch an object can set: only the names tower gives its objects are deleted
      if (!named(part, k, name)) continue;
      const kept =
        (k.kind === 'Secret' && IDENTITY_SECRETS.includes(name)) ||
        (k.kind === 'ConfigMap' && (name === REVOCATIONS_CONFIGMAP || name === AGENT_POLICY_CONFIGMAP));
      if (!purge && kept) continue;
      const namespace = o.metadata?.namespace;
      // a PodDisruptionBudget served in two versions is one object
      found.set(`${k.kind}/${namespace ?? ''}/${name}`, { apiVersion: k.apiVersion, kind: k.kind, name, namespace });
    }
  }
  return [...found.values()];
}

/**
 * Whether `name` is one tower gives a `kind` of `part`: the installed objects' (tower, tower-agent, and the
 * cluster-admin binding), and what the proxy makes while it runs (tower-* Secrets, ConfigMaps and Leases, the
 * clusters' mc-<name> Services). Cluster-scoped objects only by their exact names.
 */
function named(part: Part, k: { kind: string; namespaced: boolean }, name: string): boolean {
  if (part === 'agent')
    return k.namespaced
      ? name === 'tower-agent' || name === AGENT_POLICY_CONFIGMAP
      : name === 'tower-agent' || name === 'tower-agent-cluster-admin';
  if (!k.namespaced) return name === 'tower';
  return (
    name === 'tower' ||
    (name.startsWith('tower-') && !name.startsWith('tower-agent')) ||
    (k.kind === 'Service' && name.startsWith('mc-'))
  );
}

/** what loses its rights first: a proxy still running (its pods outlive the Deployment) can recreate nothing */
const DELETION_ORDER = ['ClusterRoleBinding', 'RoleBinding', 'ServiceAccount', 'Deployment'];
const rank = (kind: string) => {
  const i = DELETION_ORDER.indexOf(kind);
  return i < 0 ? DELETION_ORDER.length : i;
};

/** deletes them, the rights first; one already gone is not an error */
export async function deleteObjects(host: HostCluster, objects: Owned[]): Promise<void> {
  const api = KubernetesObjectApi.makeApiClient(host.kc);
  for (const o of [...objects].sort((a, b) => rank(a.kind) - rank(b.kind))) {
    try {
      await api.delete(
        { apiVersion: o.apiVersion, kind: o.kind, metadata: { name: o.name, namespace: o.namespace } },
        undefined,
        undefined,
        undefined,
        undefined,
        // the pods and ReplicaSets follow through the garbage collector
        'Background',
      );
    } catch (err) {
      if (apiStatus(err) === 404) continue;
      throw apiError(`deleting ${o.kind} ${o.namespace ? `${o.namespace}/` : ''}${o.name}`, host.server, err);
    }
  }
}
