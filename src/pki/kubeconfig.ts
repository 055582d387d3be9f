import { stringify as toYaml } from 'yaml';

export interface KubeconfigParams {
  cluster: string;
  server: string;
  caPem: string;
  user: string;
  certPem: string;
  keyPem: string;
  /** lines said at the top, as YAML comments (who it acts as, when it expires) */
  comment?: string[];
}

const b64 = (s: string) => Buffer.from(s).toString('base64');

/** A kubeconfig with inline data, one cluster, one user, one context named after the cluster. */
export function renderKubeconfig(p: KubeconfigParams): string {
  const head = (p.comment ?? []).map((line) => `# ${line}\n`).join('');
  return (
    head +
    toYaml(
      {
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: p.cluster, cluster: { server: p.server, 'certificate-authority-data': b64(p.caPem) } }],
        users: [
          {
            name: `${p.user}@${p.cluster}`,
            user: { 'client-certificate-data': b64(p.certPem), 'client-key-data': b64(p.keyPem) },
          },
        ],
        contexts: [{ name: p.cluster, context: { cluster: p.cluster, user: `${p.user}@${p.cluster}` } }],
        'current-context': p.cluster,
        preferences: {},
      },
      // kubectl reads YAML 1.1: a cluster named "yes" must stay a string
      { version: '1.1', lineWidth: 0 },
    )
  );
}
