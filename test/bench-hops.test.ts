import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { callsIn, hopTimes, parseLegs, type HopPorts } from '../scripts/bench/hops.ts';

// the bench's per-hop timeline is read off tcpdump and strace: these tests hold its reading to
// what those tools print, so that a figure in the README is what the wire said
const TOWER: HopPorts = { entry: 8443, middle: 8080, upstream: 6443, middleListensAtEntry: true };
const SSH: HopPorts = { entry: 9000, middle: 2222, upstream: 6443, middleListensAtEntry: false };

/** a tcpdump -n -tt -q line: `at` in µs */
const seg = (at: number, from: number, to: number, bytes: number) =>
  `${(at / 1e6).toFixed(6)} IP 127.0.0.1.${from} > 127.0.0.1.${to}: tcp ${bytes}`;

describe('the bench reads one request hop by hop off the wire', () => {
  test(
    'tower: client → gateway → agent (over the agent port) ' +
      '→ upstream and back, acks and window adjustments skipped',
    () => {
      const lines = [
        seg(1_000, 51000, 8443, 300), // the client's request at the gateway
        seg(1_001, 8443, 51000, 0), // an ack: no bytes
        seg(1_150, 8080, 40000, 180), // the proxy's WebSocket frame to the agent
        seg(1_240, 41000, 6443, 350), // the agent's request to the upstream
        seg(1_300, 6443, 41000, 250), // the upstream answers
        seg(1_310, 8080, 40000, 40), // the proxy sends something else meanwhile (a window adjustment)
        seg(1_390, 40000, 8080, 320), // the agent's frame back
        seg(1_500, 8443, 51000, 260), // the answer at the client
        'tcpdump: a line of something else',
      ].join('\n');
      const legs = parseLegs(lines, TOWER);
      assert.deepEqual(
        legs.map((s) => s.leg),
        [0, 1, 2, 3, 1, 4, 5],
      );
      const { hops, requests } = hopTimes(legs);
      assert.equal(requests, 1);
      assert.deepEqual(Object.values(hops), [150, 90, 60, 90, 110]);
    },
  );

  test('OpenSSH: ssh dials sshd, so the middle port is the destination on the way in', () => {
    const lines = [
      seg(0, 50000, 9000, 300),
      seg(20, 33000, 2222, 400),
      seg(40, 34000, 6443, 300),
      seg(100, 6443, 34000, 250),
      seg(120, 2222, 33000, 330),
      seg(140, 9000, 50000, 260),
    ].join('\n');
    const { hops, requests } = hopTimes(parseLegs(lines, SSH));
    assert.equal(requests, 1);
    assert.deepEqual(Object.values(hops), [20, 20, 60, 20, 20]);
  });

  test('a request whose legs are cut short is dropped, not counted, and the medians come from the whole ones', () => {
    const whole = (t0: number, d: number) => [
      seg(t0, 51000, 8443, 300),
      seg(t0 + d, 8080, 40000, 180),
      seg(t0 + 2 * d, 41000, 6443, 350),
      seg(t0 + 3 * d, 6443, 41000, 250),
      seg(t0 + 4 * d, 40000, 8080, 320),
      seg(t0 + 5 * d, 8443, 51000, 260),
    ];
    const lines = [
      ...whole(0, 10),
      seg(1_000, 51000, 8443, 300),
      seg(1_010, 8080, 40000, 180), // lost after two legs: the next request begins
      ...whole(2_000, 30),
      ...whole(3_000, 20),
    ].join('\n');
    const { hops, requests } = hopTimes(parseLegs(lines, TOWER));
    assert.equal(requests, 3);
    assert.deepEqual(Object.values(hops), [20, 20, 20, 20, 20]);
  });

  test('no whole request: every hop is unknown', () => {
    const { hops, requests } = hopTimes(parseLegs(seg(0, 51000, 8443, 300), TOWER));
    assert.equal(requests, 0);
    assert.ok(Object.values(hops).every(Number.isNaN));
  });
});

describe('the bench counts event-loop waits and writes from strace -c', () => {
  test('the calls column of the named system calls, with or without an errors column', () => {
    const summary = [
      'strace: Process 3473 attached with 11 threads',
      '% time     seconds  usecs/call     calls    errors syscall',
      '------ ----------- ----------- --------- --------- ----------------',
      ' 34.71    0.036118           2     16072           epoll_pwait',
      ' 34.52    0.035920           8      4089           writev',
      ' 30.77    0.032012           7      4349        12 write',
      '------ ----------- ----------- --------- --------- ----------------',
      '100.00    0.104050           4     24510        12 total',
    ].join('\n');
    assert.equal(callsIn(summary, ['epoll_wait', 'epoll_pwait']), 16072);
    assert.equal(callsIn(summary, ['write', 'writev', 'sendmsg']), 4089 + 4349);
    assert.equal(callsIn(summary, ['poll']), 0);
  });
});
