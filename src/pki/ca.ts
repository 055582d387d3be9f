import { createPrivateKey, hkdfSync, randomBytes, webcrypto, X509Certificate as NodeX509 } from 'node:crypto';
import { isIP } from 'node:net';
import * as x509 from '@peculiar/x509';
import { normalizeSerial } from '../config/names.ts';
import { TowerError } from '../errors.ts';

// @peculiar/x509 directly, not selfsigned (which wraps it): selfsigned writes the issuer from the CA's subject
// as a string (Go then cannot chain a leaf of a UTF8String CA), signs with the leaf's key type (no EC leaf
// under an RSA CA), and has no key identifier extensions
x509.cryptoProvider.set(webcrypto as never);

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
type Algorithm = webcrypto.Algorithm;
type EcdsaParams = webcrypto.EcdsaParams;

const CA_VALIDITY_DAYS = 3650;
export const DAY_MS = 86_400_000;
const EC_KEY = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const EC_SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
/** the EC curves a loaded CA key may use, by Node's name: WebCrypto's name and the hash tower signs with */
const CA_CURVES = new Map([
  ['prime256v1', { namedCurve: 'P-256', hash: 'SHA-256' }],
  ['secp384r1', { namedCurve: 'P-384', hash: 'SHA-384' }],
  ['secp521r1', { namedCurve: 'P-521', hash: 'SHA-384' }],
]);
/**
 * SHA-256 of the CA that the Go tower's repository publishes together with its private key, and
 * that KubeSphere's installer used: anyone can sign client certificates for it.
 */
export const PUBLIC_KUBESPHERE_CA_SHA256 =
  'B9:3C:AA:53:37:5A:81:92:94:69:5D:74:A4:B7:D7:B4:E5:1C:4A:63:D3:32:F9:77:D7:39:A0:82:13:82:19:97';

/** A leaf and what `tower revoke` and its holder need to know of it. */
export interface IssuedCertificate extends KeyPairPem {
  /** as `tower revoke --serial` takes it: upper-case hex */
  serial: string;
  notAfter: Date;
}

export interface KeyPairPem {
  cert: string;
  key: string;
}

/** tower's certificate authority: issues the gateway's serving certificate and kubeconfig client certificates. */
export class CertificateAuthority {
  readonly certPem: string;
  readonly cert: x509.X509Certificate;
  #key: CryptoKey;
  #signAlg: Algorithm | EcdsaParams;
  /** the key's PKCS#8 DER, from which secrets only the CA's holders share are derived */
  #der: Buffer;

  private constructor(
    certPem: string,
    cert: x509.X509Certificate,
    key: CryptoKey,
    signAlg: Algorithm | EcdsaParams,
    der: Buffer,
  ) {
    this.certPem = certPem;
    this.cert = cert;
    this.#key = key;
    this.#signAlg = signAlg;
    this.#der = der;
  }

  /** A 32-byte secret for `purpose`, the same wherever this CA's key is loaded (HKDF-SHA256 of the key). */
  secret(purpose: string): Buffer {
    return Buffer.from(hkdfSync('sha256', this.#der, 'tower-ca', purpose, 32));
  }

  static async create(commonName = 'tower-ca'): Promise<KeyPairPem> {
    const keys = (await webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name: `CN=${commonName}`,
      notBefore: new Date(now - ISSUE_BACKDATE_MS),
      notAfter: new Date(now + CA_VALIDITY_DAYS * DAY_MS),
      keys: keys as never,
      signingAlgorithm: EC_SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey as never),
      ],
    });
    return { cert: cert.toString('pem') + '\n', key: await exportKeyPem(keys.privateKey) };
  }

  /** Loads a CA from PEM; `origin` names where it came from in error messages. */
  static async load(pair: KeyPairPem, origin: string): Promise<CertificateAuthority> {
    let nodeCert: NodeX509;
    try {
      nodeCert = new NodeX509(pair.cert);
    } catch (err) {
      throw new TowerError(
        'ECA',
        `cannot parse the CA certificate from ${origin}: ${(err as Error).message} (want a PEM certificate)`,
      );
    }
    if (nodeCert.fingerprint256 === PUBLIC_KUBESPHERE_CA_SHA256) {
      throw new TowerError(
        'EPUBLICCA',
        `the CA from ${origin} is the public KubeSphere CA whose private key is published; ` +
          'anyone could sign client certificates for it. Drop --ca-cert/--ca-key to let tower create a CA of its own',
      );
    }
    if (!nodeCert.ca)
      throw new TowerError('ECA', `the certificate from ${origin} is not a CA (basicConstraints CA:TRUE missing)`);
    let keyObj;
    try {
      keyObj = createPrivateKey(pair.key);
    } catch (err) {
      throw new TowerError(
        'ECA',
        `cannot parse the CA key from ${origin}: ${(err as Error).message} (want a PEM private key)`,
      );
    }
    if (!nodeCert.checkPrivateKey(keyObj))
      throw new TowerError('ECA', `the CA key from ${origin} does not belong to its certificate`);
    const der = keyObj.export({ format: 'der', type: 'pkcs8' });
    let importAlg: webcrypto.RsaHashedImportParams | webcrypto.EcKeyImportParams;
    let signAlg: Algorithm | EcdsaParams;
    if (keyObj.asymmetricKeyType === 'rsa') {
      importAlg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
      signAlg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as Algorithm;
    } else if (keyObj.asymmetricKeyType === 'ec') {
      const curve = keyObj.asymmetricKeyDetails?.namedCurve;
      const known = CA_CURVES.get(curve ?? '');
      if (!known)
        throw new TowerError(
          'ECA',
          `the CA key from ${origin} uses curve ${curve}, which tower cannot sign with (use P-256, P-384 or P-521)`,
        );
      importAlg = { name: 'ECDSA', namedCurve: known.namedCurve };
      signAlg = { name: 'ECDSA', hash: known.hash } as EcdsaParams;
    } else {
      throw new TowerError(
        'ECA',
        `the CA key from ${origin} is ${keyObj.asymmetricKeyType}; tower signs with RSA or ECDSA CA keys`,
      );
    }
    const key = await webcrypto.subtle.importKey('pkcs8', der, importAlg, false, ['sign']);
    return new CertificateAuthority(pair.cert, new x509.X509Certificate(pair.cert), key, signAlg, der);
  }

  /** A TLS server certificate for the given host names and addresses. */
  issueServer(hosts: string[], days = 365): Promise<KeyPairPem> {
    const names = [...new Set(hosts.filter(Boolean))];
    return this.#issue(names[0] ?? 'tower', [], days * DAY_MS, [
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(
        names.map((h) => (isIP(h) ? { type: 'ip', value: h } : { type: 'dns', value: h })),
      ),
    ]);
  }

  /**
   * A TLS client certificate: Kubernetes reads CN as the user and O as the groups. With `cluster`,
   * the certificate is bound to that cluster (a URI SAN the gateway reads). It lives `days` (a fraction
   * for hours: `tower kubeconfig --ttl`), or as long as the CA when that is sooner.
   */
  issueClient(
    user: string,
    groups: string[],
    days = 365,
    cluster?: string,
    uris: string[] = [],
  ): Promise<IssuedCertificate> {
    const now = Date.now();
    const ext: x509.Extension[] = [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])];
    // when it was issued, exactly: notBefore is back-dated, and a revocation goes by the time of issue
    const names = [...(cluster ? [clusterUri(cluster)] : []), ...uris, ISSUED_URI_PREFIX + now];
    ext.push(new x509.SubjectAlternativeNameExtension(names.map((value) => ({ type: 'url' as const, value }))));
    return this.#issue(user, groups, days * DAY_MS, ext, now);
  }

  async #issue(
    cn: string,
    orgs: string[],
    lifetimeMs: number,
    extensions: x509.Extension[],
    now = Date.now(),
  ): Promise<IssuedCertificate> {
    const keys = (await webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify'])) as CryptoKeyPair;
    // a leaf never outlives its CA
    const notAfter = new Date(Math.min(now + Math.round(lifetimeMs), this.cert.notAfter.getTime()));
    const subject = [...orgs.map((o) => ({ O: [o] })), { CN: [cn] }];
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject,
      // the CA's own Name object keeps its subject bytes as the issuer, which Go's chain building compares
      issuer: this.cert.subjectName,
      notBefore: new Date(now - ISSUE_BACKDATE_MS),
      notAfter,
      publicKey: keys.publicKey as never,
      signingKey: this.#key as never,
      signingAlgorithm: this.#signAlg,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        await x509.AuthorityKeyIdentifierExtension.create(this.cert, false),
        ...extensions,
      ],
    });
    return {
      cert: cert.toString('pem') + '\n',
      key: await exportKeyPem(keys.privateKey),
      serial: normalizeSerial(cert.serialNumber),
      notAfter: cert.notAfter,
    };
  }
}

/** every leaf's notBefore is this far before its issue, for clocks a little behind */
export const ISSUE_BACKDATE_MS = 5 * 60_000;

const CLUSTER_URI_PREFIX = 'urn:tower:cluster:';

export function clusterUri(cluster: string): string {
  return CLUSTER_URI_PREFIX + cluster;
}

/** The cluster a client certificate is bound to, from Node's `subjectaltname` string. */
const ISSUED_URI_PREFIX = 'urn:tower:issued:';
const ISSUED_URI = /^URI:urn:tower:issued:(\d{1,15})$/;

/** When tower issued the certificate (ms), from the URI it carries; undefined for one another issuer made. */
export function issuedAtOf(subjectAltName: string | undefined): number | undefined {
  for (const part of (subjectAltName ?? '').split(', ')) {
    const m = ISSUED_URI.exec(part);
    if (m) return Number(m[1]);
  }
  return undefined;
}

export function boundCluster(subjectAltName: string | undefined): string | undefined {
  if (!subjectAltName) return undefined;
  for (const part of subjectAltName.split(', ')) {
    if (part.startsWith('URI:' + CLUSTER_URI_PREFIX)) return part.slice(4 + CLUSTER_URI_PREFIX.length);
  }
  return undefined;
}

function serial(): string {
  const b = randomBytes(16);
  b[0]! &= 0x7f; // positive
  return b.toString('hex');
}

async function exportKeyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  const body = der.toString('base64').replace(/.{1,64}/g, '$&\n');
  return `-----BEGIN PRIVATE KEY-----\n${body}-----END PRIVATE KEY-----\n`;
}
