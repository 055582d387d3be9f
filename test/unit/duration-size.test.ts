// Durations and sizes as flags and config files write them ("1m30s", "64Mi"): what they parse to, what is
// refused, and that every value tower prints reads back as itself.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { formatDuration, parseDuration } from '../../src/config/duration.ts';
import { formatSize, parseSize } from '../../src/config/size.ts';

describe('durations, as Go writes them', () => {
  test('each unit, sums of units, fractions and a bare 0 parse to milliseconds', () => {
    const cases: [string, number][] = [
      ['0', 0],
      ['250ms', 250],
      ['10s', 10_000],
      ['1m30s', 90_000],
      ['1.5h', 5_400_000],
      ['2h45m', 9_900_000],
      ['1500us', 2],
      ['1500µs', 2],
      ['100ns', 0],
      [' 30s ', 30_000],
    ];
    for (const [text, ms] of cases) assert.equal(parseDuration(text), ms, text);
  });

  test('what is not a duration is undefined: no unit, an unknown unit, a sign, spaces inside, nothing', () => {
    for (const text of ['', '10', 's', '10 s', '10sec', '1d', '-1s', '+1s', '1h-1s', '1S', 'ten seconds']) {
      assert.equal(parseDuration(text), undefined, JSON.stringify(text));
    }
  });

  test('the largest whole unit is printed', () => {
    assert.equal(formatDuration(0), '0s');
    assert.equal(formatDuration(250), '250ms');
    assert.equal(formatDuration(1500), '1500ms');
    assert.equal(formatDuration(30_000), '30s');
    assert.equal(formatDuration(90_000), '90s');
    assert.equal(formatDuration(120_000), '2m');
    assert.equal(formatDuration(7_200_000), '2h');
  });

  test('every printed duration parses back to itself', () => {
    fc.assert(
      fc.property(fc.nat(), (ms) => parseDuration(formatDuration(ms)) === ms),
      { numRuns: 2000 },
    );
  });
});

describe('sizes, as Kubernetes writes quantities', () => {
  test('plain bytes, decimal and binary suffixes, fractions', () => {
    const cases: [string, number][] = [
      ['0', 0],
      ['1048576', 1_048_576],
      ['200M', 200_000_000],
      ['64Mi', 64 * 2 ** 20],
      ['512Ki', 512 * 2 ** 10],
      ['1.5Gi', 1.5 * 2 ** 30],
      ['1k', 1000],
      ['2G', 2e9],
      [' 24Mi ', 24 * 2 ** 20],
    ];
    for (const [text, bytes] of cases) assert.equal(parseSize(text), bytes, text);
  });

  test('what is not a size is undefined: other suffixes or case, a sign, an exponent, too large to be exact', () => {
    for (const text of ['', 'Mi', '64mi', '64MB', '64 Mi', '-1', '1e3', '1Ti', '9007199254740993', '8388608Gi']) {
      assert.equal(parseSize(text), undefined, JSON.stringify(text));
    }
  });

  test('the largest whole binary unit is printed, else plain bytes', () => {
    assert.equal(formatSize(0), '0');
    assert.equal(formatSize(1000), '1000');
    assert.equal(formatSize(1536), '1536');
    assert.equal(formatSize(2 ** 10), '1Ki');
    assert.equal(formatSize(64 * 2 ** 20), '64Mi');
    assert.equal(formatSize(1.5 * 2 ** 30), '1536Mi');
    assert.equal(formatSize(2 ** 31), '2Gi');
  });

  test('every printed size parses back to itself', () => {
    fc.assert(
      fc.property(fc.maxSafeNat(), (bytes) => parseSize(formatSize(bytes)) === bytes),
      { numRuns: 2000 },
    );
  });
});
