import assert from 'node:assert/strict';
import { createPrivateKey, sign, webcrypto } from 'node:crypto';
import { test } from 'node:test';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate } from '@peculiar/asn1-x509';
import * as x509 from '@peculiar/x509';
import { CertificateAuthority } from '../../src/pki/ca.ts';
import { ClientCertificateCheck } from '../../src/proxy/gateway/client-certificate.ts';

const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };

/** a client certificate signed by the CA, with the serial's DER content bytes as given */
async function signed(ca: { cert: string; key: string }, serialHex: string): Promise<Buffer> {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const caCert = new x509.X509Certificate(ca.cert);
  const made = await x509.X509CertificateGenerator.create({
    serialNumber: '01',
    subject: 'CN=jane',
    issuer: caCert.subjectName,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3_600_000),
    publicKey: keys.publicKey as never,
    signingKey: keys.privateKey as never,
    signingAlgorithm: EC,
  });
  // the serial set byte for byte (the generator would make 0x9A… positive), then signed by the CA
  const cert = AsnConvert.parse(made.rawData, Certificate);
  cert.tbsCertificate.serialNumber = new Uint8Array(Buffer.from(serialHex, 'hex')).buffer;
  const tbs = Buffer.from(AsnConvert.serialize(cert.tbsCertificate));
  cert.signatureValue = new Uint8Array(
    sign('sha256', tbs, { key: createPrivateKey(ca.key), dsaEncoding: 'der' }),
  ).buffer;
  return Buffer.from(AsnConvert.serialize(cert));
}

test('client certificates: a serial such as 0x009A… is good; a negative, zero or overlong one is not', async () => {
  const ca = await CertificateAuthority.create();
  const check = new ClientCertificateCheck(ca.cert);
  assert.equal(check.problem(await signed(ca, '0a1b2c')), undefined);
  // one in 256 of the serials tower draws (16 random bytes, the first below 0x80) reads like this
  assert.equal(check.problem(await signed(ca, '009a1b2c3d4e5f60718293a4b5c6d7e8')), undefined);
  assert.equal(check.problem(await signed(ca, '9a1b2c')), 'a certificate with a negative serial number');
  assert.equal(check.problem(await signed(ca, 'ff')), 'a certificate with a negative serial number');
  // at most 20 bytes, positive, as RFC 5280 has it: what tower revoke --serial can name
  assert.equal(check.problem(await signed(ca, '00' + 'ab'.repeat(19))), undefined);
  assert.equal(check.problem(await signed(ca, '7f' + 'ab'.repeat(19))), undefined);
  const long = 'a certificate with a serial number longer than 20 bytes';
  assert.equal(check.problem(await signed(ca, '01' + 'ab'.repeat(20))), long);
  assert.equal(check.problem(await signed(ca, '7f' + 'ab'.repeat(60))), long);
  assert.equal(check.problem(await signed(ca, '00')), 'a certificate with serial number 0');
});
