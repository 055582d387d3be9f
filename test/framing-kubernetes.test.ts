// Request smuggling (issue 20) in Kubernetes mode, judged at the far side of the wire: the framing
// harness of test/framing.test.ts through every way into a cluster of two replicas: each one's
// cluster kubernetes port and ks-apiserver port, on the replica that holds the agent and on the one
// that forwards to it over a pooled connection between replicas, and the forwarding replica's
// shared gateway.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { checkFraming } from './support/framing-harness.ts';
import { startKubernetesModeStack } from './support/framing-stack.ts';

/** One seed per run, printed; entry point i runs seed + i. TOWER_FRAMING_SEED=<seed> replays it. */
const seed = Number(process.env.TOWER_FRAMING_SEED ?? Date.now() % 2 ** 31);
console.log(`framing seed ${seed}`);
/** five entry points share the time: fewer rounds each than in file mode */
const RUNS_PER_ENTRY = 12;
const TIME_LIMIT_PER_ENTRY_MS = 20_000;
const ENTRIES = [
  'the kubernetes port of cluster delta on r1, which holds the agent',
  'the kubernetes port of cluster delta on r2, forwarded to r1',
  'the ks-apiserver port of cluster delta on r1, which holds the agent',
  'the ks-apiserver port of cluster delta on r2, forwarded to r1',
  'the shared gateway, cluster delta, on r2, forwarded to r1',
];

let s: Awaited<ReturnType<typeof startKubernetesModeStack>>;

before(async () => {
  s = await startKubernetesModeStack();
});

after(async () => {
  // the replicas and the agent by PID, the host apiserver, then the recording upstream
  await s?.close();
});

describe('no request smuggling into a cluster of two replicas (Kubernetes mode)', () => {
  ENTRIES.forEach((name, i) => {
    test(
      `jane and bob at once through ${name}: the member sees exactly ` +
        `their heads, as each of them, and each gets their own answers`,
      async () => {
        const entry = s.entries.find((e) => e.name === name);
        assert.ok(entry, `an entry point named ${name}`);
        const tally = await checkFraming(entry, s.recorder, {
          seed: seed + i,
          numRuns: RUNS_PER_ENTRY,
          timeLimitMs: TIME_LIMIT_PER_ENTRY_MS,
        });
        console.log(
          `${entry.name} (seed ${seed + i}): ${tally.forwarded} requests forwarded, ` +
            `${tally.refused} refused, ${tally.unanswered} unanswered`,
        );
        assert.ok(tally.forwarded > 0, 'some requests reached the member');
      },
    );
  });
});
