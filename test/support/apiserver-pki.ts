import { writeFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { CertificateAuthority, type KeyPairPem } from '../../src/pki/ca.ts';

/**
 * A stand-in apiserver's own CA, its serving certificate for 127.0.0.1, and the client certificate its agent presents.
 */
export interface ApiserverPki {
  caPem: string;
  serving: KeyPairPem;
  client: KeyPairPem;
}

/** A CA of its own per stand-in (named for it), so that one test's member never trusts another's agent. */
export async function issueApiserverPki(
  name: string,
  client: { user: string; groups: string[] },
): Promise<ApiserverPki> {
  const caPair = await CertificateAuthority.create(`${name}-ca`);
  const ca = await CertificateAuthority.load(caPair, name);
  return {
    caPem: caPair.cert,
    serving: await ca.issueServer(['127.0.0.1', 'localhost']),
    client: await ca.issueClient(client.user, client.groups),
  };
}

/**
 * The agent's kubeconfig for a stand-in apiserver at `server`: a bearer token (as a ServiceAccount's) or the client
 * certificate.
 */
export function writeAgentKubeconfig(
  path: string,
  server: string,
  pki: ApiserverPki,
  user: { token: string } | 'cert',
): string {
  const credential =
    user === 'cert'
      ? {
          'client-certificate-data': Buffer.from(pki.client.cert).toString('base64'),
          'client-key-data': Buffer.from(pki.client.key).toString('base64'),
        }
      : { token: user.token };
  writeFileSync(
    path,
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        {
          name: 'member',
          cluster: { server, 'certificate-authority-data': Buffer.from(pki.caPem).toString('base64') },
        },
      ],
      users: [{ name: 'tower-agent', user: credential }],
      contexts: [{ name: 'member', context: { cluster: 'member', user: 'tower-agent' } }],
      'current-context': 'member',
    }),
    { mode: 0o600 },
  );
  return path;
}
