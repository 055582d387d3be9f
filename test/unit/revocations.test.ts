import assert from 'node:assert/strict';
import { test } from 'node:test';
import { normalizeSerial } from '../../src/config/names.ts';
import { Logger } from '../../src/observe/log.ts';
import { RevocationWatch } from '../../src/proxy/revocation-watch.ts';
import { certificateFacts, parseRevocations, RevocationIndex, type RevocationList } from '../../src/pki/revocations.ts';

const at = '2026-01-01T00:00:00Z';
const facts = (serial: string, user: string, issuedAt: number) => ({ serial, user, issuedAt, notAfter: Infinity });

test('revocations: a serial, a user or everyone, each up to a time; a later certificate is good', () => {
  const list = parseRevocations({
    revocations: [
      { serial: '00:0a:BC', revokedAt: at },
      { user: 'jane', issuedBefore: '2026-01-02T00:00:00Z', revokedAt: at },
      { issuedBefore: '2026-01-01T00:00:00Z', revokedAt: at },
    ],
  }) as RevocationList;
  assert.equal(typeof list, 'object');
  const index = new RevocationIndex(list);
  const t = (iso: string) => Date.parse(iso);
  assert.equal(index.revokes(facts('ABC', 'bob', t('2027-01-01T00:00:00Z'))), list.revocations[0]);
  assert.equal(index.revokes(facts('1', 'jane', t('2026-01-01T12:00:00Z'))), list.revocations[1]);
  assert.equal(index.revokes(facts('1', 'jane', t('2026-01-02T00:00:00Z'))), undefined);
  assert.equal(index.revokes(facts('1', 'bob', t('2025-12-31T23:59:59Z'))), list.revocations[2]);
  assert.equal(index.revokes(facts('1', 'bob', t('2026-01-01T00:00:00Z'))), undefined);
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

test(
  'the watch: a list it cannot read holds only so long; ' + 'an expired certificate is refused on every request',
  async () => {
    let fail = false;
    const records = {
      location: 'test list',
      read: async () => {
        if (fail) throw new Error('forbidden');
        return { revocations: [{ user: 'jane', issuedBefore: '2026-01-02T00:00:00Z', revokedAt: at }] };
      },
      add: async () => ({ revocations: [] }),
    };
    const watch = new RevocationWatch(records, new Logger(), { pollMs: 10, staleMs: 150 });
    const bob = facts('B0B', 'bob', Date.parse('2026-01-01T00:00:00Z'));
    const jane = facts('1A', 'jane', Date.parse('2026-01-01T00:00:00Z'));
    await watch.start();
    try {
      assert.equal(watch.refusal(bob), undefined);
      assert.match(watch.refusal(jane)!, /revoked \(certificates of user "jane" issued before/);
      // expired since its handshake: refused whatever the list says
      assert.match(watch.refusal({ ...bob, notAfter: Date.now() - 1 })!, /^this client certificate expired at /);
      fail = true;
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(watch.refusal(bob), undefined, 'the last list holds for a moment');
      await new Promise((r) => setTimeout(r, 250));
      assert.match(
        watch.refusal(bob)!,
        /cannot enforce its revocation list: test list has not been read for \d+s \(forbidden\)/,
      );
      fail = false;
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(watch.refusal(bob), undefined, 'read again: served again');
    } finally {
      watch.close();
    }
  },
);

test("facts: tower's own certificates say when they were issued; another issuer's go by notBefore", () => {
  const base = {
    serialNumber: '00ab',
    subject: { CN: 'jane' },
    valid_from: 'Jan  1 00:00:00 2026 GMT',
    valid_to: 'Jan  2 00:00:00 2026 GMT',
  };
  const own = certificateFacts({
    ...base,
    subjectaltname: 'URI:urn:tower:cluster:alpha, URI:urn:tower:issued:1767225900000',
  } as never);
  assert.deepEqual(own, {
    serial: 'AB',
    user: 'jane',
    issuedAt: 1767225900000,
    notAfter: Date.parse('2026-01-02T00:00:00Z'),
  });
  // without the mark: notBefore, which errs towards revoking; a forged mark inside a quoted name is no mark
  for (const subjectaltname of [undefined, 'URI:"urn:x, URI:urn:tower:issued:1767225900000"']) {
    const other = certificateFacts({ ...base, subjectaltname } as never, Date.parse('2026-01-01T12:00:00Z'));
    assert.equal(other.issuedAt, Date.parse('2026-01-01T00:00:00Z'));
    assert.equal(other.notAfter, Date.parse('2026-01-01T12:00:00Z'), 'the CA expires first');
  }
});
