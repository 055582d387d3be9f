import { readFileOrExplain } from '../config/files.ts';
import { ConfigError } from '../errors.ts';
import type { ClusterStore } from '../store/types.ts';
import { generateHostKey, hostKeyFingerprint } from '../tunnel/ssh.ts';
import type { CertificateAuthority } from './ca.ts';

/** tower's CA: from --ca-cert/--ca-key when given, else the store's own, created on first use. */
export async function loadCertificateAuthority(
  store: ClusterStore,
  caCert?: string,
  caKey?: string,
): Promise<CertificateAuthority> {
  // the X.509 stack is loaded by the commands that sign, never by an agent
  const { CertificateAuthority } = await import('./ca.ts');
  if (caCert || caKey) {
    if (!caCert || !caKey)
      throw new ConfigError(
        'give both --ca-cert and --ca-key, or neither to let tower keep its own CA in the data dir',
      );
    const pair = {
      cert: readFileOrExplain(caCert, '--ca-cert').toString('utf8'),
      key: readFileOrExplain(caKey, '--ca-key').toString('utf8'),
    };
    return CertificateAuthority.load(pair, `${caCert} and ${caKey}`);
  }
  const m = await store.loadOrCreateKeyMaterial('ca', async () => {
    const pair = await CertificateAuthority.create('tower-ca');
    return { 'ca.crt': pair.cert, 'ca.key': pair.key };
  });
  return CertificateAuthority.load({ cert: m['ca.crt']!, key: m['ca.key']! }, store.location);
}

/** The proxy's persistent SSH host key (OpenSSH PEM), created on first use. */
export async function loadHostKey(store: ClusterStore): Promise<string> {
  const m = await store.loadOrCreateKeyMaterial('ssh-host-key', async () => ({ ssh_host_key: generateHostKey() }));
  const key = m.ssh_host_key!;
  try {
    hostKeyFingerprint(key);
  } catch (err) {
    throw new ConfigError(
      `the proxy's SSH host key in ${store.location} is not a usable private key (${(err as Error).message}); restore it, or remove it to make a new one (agents pinned to the old fingerprint then need the new join command)`,
    );
  }
  return key;
}
