/**
 * KubeSphere's Cluster resource as tower reads it: names, types and pure checks. No API client here,
 * so that commands which do not talk to a host cluster never load one.
 */
import { existsSync } from 'node:fs';
import type { V1ObjectMeta } from '@kubernetes/client-node';

export const GROUP = 'cluster.kubesphere.io';
export const VERSION = 'v1alpha1';
export const PLURAL = 'clusters';
export const CLUSTERS_PATH = `/apis/${GROUP}/${VERSION}/${PLURAL}`;
/** where KubeSphere keeps its system objects, and tower its Services, Secrets and Lease */
export const NAMESPACE = 'kubesphere-system';

/**
 * On everything tower creates in a cluster (installed or made at run time), never on the shared namespace or the
 * Cluster CRD, so that `tower uninstall` removes exactly what tower made.
 */
export const PROXY_OWNED_LABELS = {
  'app.kubernetes.io/managed-by': 'tower',
  'app.kubernetes.io/part-of': 'tower',
  'app.kubernetes.io/instance': 'tower-proxy',
};
export const AGENT_OWNED_LABELS = { ...PROXY_OWNED_LABELS, 'app.kubernetes.io/instance': 'tower-agent' };
/** tower's CA and SSH host key: members' kubeconfigs and agents' fingerprints depend on them, kept unless purged */
export const IDENTITY_SECRETS = ['tower-ca', 'tower-ssh-host-key'];
/** the revocation list: kept with the CA that issued what it revokes, or a reinstall would let them back in */
export const REVOCATIONS_CONFIGMAP = 'tower-revocations';
/** the member policy that `tower install agent --policy-preset` writes, and the Role that lets the agent read it */
export const AGENT_POLICY_CONFIGMAP = 'tower-agent-policy';

const SERVICE_ACCOUNT_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

export interface ClusterCondition {
  type: string;
  status: string;
  lastUpdateTime?: string;
  lastTransitionTime?: string;
  reason?: string;
  message?: string;
}

/** KubeSphere's Cluster (cluster.kubesphere.io/v1alpha1); JSON names are the contract. */
export interface KubeCluster {
  apiVersion?: string;
  kind?: string;
  metadata: V1ObjectMeta & { name: string };
  spec?: {
    joinFederation?: boolean;
    enable?: boolean;
    provider?: string;
    externalKubeAPIEnabled?: boolean;
    config?: string;
    connection?: {
      type?: string;
      kubernetesAPIEndpoint?: string;
      externalKubernetesAPIEndpoint?: string;
      kubesphereAPIEndpoint?: string;
      /** base64 of the kubeconfig's bytes (a Go []byte) */
      kubeconfig?: string;
      token?: string;
      kubernetesAPIServerPort?: number;
      kubesphereAPIServerPort?: number;
    };
  };
  status?: { conditions?: ClusterCondition[]; [k: string]: unknown };
}

/** Whether the environment looks like a pod with a service account (in-cluster config). */
export function inCluster(): boolean {
  return Boolean(process.env.KUBERNETES_SERVICE_HOST) && existsSync(SERVICE_ACCOUNT_TOKEN);
}

/** Why tower does not act on this Cluster, or undefined when it does. */
export function notOurs(c: KubeCluster): string | undefined {
  if (c.metadata.deletionTimestamp) return 'it is being deleted';
  if (c.spec?.connection?.type !== 'proxy')
    return `its spec.connection.type is ${JSON.stringify(c.spec?.connection?.type ?? '')}, not "proxy"`;
  if (c.spec?.joinFederation !== true) return 'its spec.joinFederation is not true';
  return undefined;
}
