import assert from 'node:assert/strict';
import { test } from 'node:test';
import { normalizeSerial } from '../../src/config/names.ts';
import { parseRevocations, revokedBy, type RevocationList } from '../../src/pki/revocations.ts';

const at = '2026-01-01T00:00:00Z';

test('revocations: a serial, a user or everyone, each up to a time; a later certificate is good', () => {
  const list = parseRevocations({
    revocations: [
      { serial: '00:0a:BC', revokedAt: at },
      { user: 'jane', issuedBefore: '2026-01-02T00:00:00Z', revokedAt: at },
      { issuedBefore: '2026-01-01T00:00:00Z', revokedAt: at },
    ],
  }) as RevocationList;
  assert.equal(typeof list, 'object');
  const t = (iso: string) => Date.parse(iso);
  assert.equal(
    revokedBy(list, { serial: 'ABC', user: 'bob', issuedAt: t('2027-01-01T00:00:00Z') }),
    list.revocations[0],
  );
  assert.equal(
    revokedBy(list, { serial: '1', user: 'jane', issuedAt: t('2026-01-01T12:00:00Z') }),
    list.revocations[1],
  );
  assert.equal(revokedBy(list, { serial: '1', user: 'jane', issuedAt: t('2026-01-02T00:00:00Z') }), undefined);
  assert.equal(revokedBy(list, { serial: '1', user: 'bob', issuedAt: t('2025-12-31T23:59:59Z') }), list.revocations[2]);
  assert.equal(revokedBy(list, { serial: '1', user: 'bob', issuedAt: t('2026-01-01T00:00:00Z') }), undefined);
  assert.equal(normalizeSerial('00:0a:bc'), 'ABC');
});

test('revocations: nothing stored is an empty list; what is not exactly a list is why, never a shorter list', () => {
  assert.deepEqual(parseRevocations(undefined), { revocations: [] });
  assert.deepEqual(parseRevocations({ revocations: [] }), { revocations: [] });
  const problems: [unknown, RegExp][] = [
    ['text', /not a mapping/],
    [{ revoked: [] }, /unknown key "revoked"/],
    [{ revocations: {} }, /not a list/],
    [{ revocations: ['jane'] }, /entry 1 is not a mapping/],
    [{ revocations: [{ users: 'jane', revokedAt: at }] }, /entry 1 has an unknown key "users"/],
    [{ revocations: [{ user: 'jane', revokedAt: at }] }, /lacks "serial" or "issuedBefore"/],
    [{ revocations: [{ serial: 'xyz', revokedAt: at }] }, /"serial" that is not hexadecimal/],
    [{ revocations: [{ serial: 'AB', user: 'jane', revokedAt: at }] }, /one entry revokes one way/],
    [{ revocations: [{ issuedBefore: 'soon', revokedAt: at }] }, /lacks "serial" or "issuedBefore"/],
    [{ revocations: [{ issuedBefore: at }] }, /lacks "revokedAt"/],
    [{ revocations: [{ user: 'a\nb', issuedBefore: at, revokedAt: at }] }, /not a user name/],
    [{ revocations: Array.from({ length: 10_001 }, () => ({ issuedBefore: at, revokedAt: at })) }, /more than 10000/],
  ];
  for (const [doc, why] of problems) {
    const r = parseRevocations(doc);
    assert.equal(typeof r, 'string', JSON.stringify(doc).slice(0, 80));
    assert.match(r as string, why);
  }
});
