import { readFileOrExplain } from '../config/files.ts';
import { ConfigError } from '../errors.ts';
import { generateHostKey, hostKeyFingerprint } from '../tunnel/ssh.ts';
import type { CertificateAuthority } from './ca.ts';

export type KeyMaterialKind = 'ca' | 'ssh-host-key';
/** file name → PEM text, e.g. { 'ca.crt': …, 'ca.key': … } */
export type KeyMaterial = Record<string, string>;

/** Where tower keeps its CA and the proxy's host key: the data dir, or Secrets in the host cluster. */
export interface KeyStore {
  /** where the material lives, for messages ("~/.tower", "clusters.cluster.kubesphere.io at …") */
  readonly location: string;
  /** returns the stored material of `kind`, creating it with `create` once, race-free across processes */
  loadOrCreate(kind: KeyMaterialKind, create: () => Promise<KeyMaterial>): Promise<KeyMaterial>;
}

/** tower's CA: from --ca-cert/--ca-key when given, else the one kept in `keys`, created on first use. */
export async function loadCertificateAuthority(
  keys: KeyStore,
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
  const m = await keys.loadOrCreate('ca', async () => {
    const pair = await CertificateAuthority.create('tower-ca');
    return { 'ca.crt': pair.cert, 'ca.key': pair.key };
  });
  return CertificateAuthority.load({ cert: m['ca.crt']!, key: m['ca.key']! }, keys.location);
}

/** The proxy's persistent SSH host key (OpenSSH PEM), created on first use. */
export async function loadHostKey(keys: KeyStore): Promise<string> {
  const m = await keys.loadOrCreate('ssh-host-key', async () => ({ ssh_host_key: generateHostKey() }));
  const key = m.ssh_host_key!;
  try {
    hostKeyFingerprint(key);
  } catch (err) {
    throw new ConfigError(
      `the proxy's SSH host key in ${keys.location} is not a usable private key (${(err as Error).message}); ` +
        'restore it, or remove it to make a new one (agents pinned to the old fingerprint then need the new join ' +
        'command)',
    );
  }
  return key;
}
