// The framing harness of test/framing.test.ts, run longer: many rounds of two users' requests,
// framed every way, through the shared gateway of a file-mode proxy, judged at the member's side.
//
//   node scripts/framing-fuzz.ts [--runs N] [--seed S] [--cluster beta|gamma] [--minutes M] [--binary PATH] [--survey]
//
// --runs (env TOWER_FRAMING_RUNS, default 500) rounds per cluster; --seed (env TOWER_FRAMING_SEED)
// replays a run; --minutes caps each cluster's share of time (default 10); --binary runs another
// build (as TOWER_BINARY does), e.g. an older commit's, to see what it let through. By default the
// first failing round is shrunk and printed (fast-check: seed, path, counterexample) and the exit
// status is 1. --survey plays every round without stopping and prints each kind of violation
// with its count and one round that shows it: what is left to fix, all at once.
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string' },
    seed: { type: 'string' },
    cluster: { type: 'string' },
    minutes: { type: 'string', default: '10' },
    binary: { type: 'string' },
    survey: { type: 'boolean', default: false },
  },
});
const runs = Number(args.runs ?? process.env.TOWER_FRAMING_RUNS ?? 500);
const seed = Number(args.seed ?? process.env.TOWER_FRAMING_SEED ?? Date.now() % 2 ** 31);
const timeLimitMs = Number(args.minutes) * 60_000;
if (!Number.isSafeInteger(runs) || runs < 1 || !Number.isSafeInteger(seed) || !(timeLimitMs > 0)) {
  console.error('framing-fuzz: --runs and --seed are integers, --minutes a positive number');
  process.exit(2);
}
// the support modules read TOWER_BINARY when they load: set it first
if (args.binary) process.env.TOWER_BINARY = args.binary;
const fc = (await import('fast-check')).default;
const { checkFraming, playRound } = await import('../test/support/framing-harness.ts');
const { roundArbitrary } = await import('../test/support/framing.ts');
const { startFileModeStack } = await import('../test/support/framing-stack.ts');

console.log(`framing fuzz: seed ${seed}, ${runs} rounds per cluster${args.binary ? `, binary ${args.binary}` : ''}`);
const s = await startFileModeStack();
let failed = false;
try {
  const entries = s.entries.filter((e) => !args.cluster || e.prefix === `/clusters/${args.cluster}`);
  if (entries.length === 0) throw new Error(`no cluster ${args.cluster} (beta: token agent, gamma: certificate agent)`);
  for (const entry of entries) {
    const started = Date.now();
    if (args.survey) {
      failed = (await survey(entry)) || failed;
    } else {
      try {
        const tally = await checkFraming(entry, s.recorder, { seed, numRuns: runs, timeLimitMs });
        console.log(
          `${entry.name}: passed; ${tally.forwarded} requests forwarded, ` +
            `${tally.refused} refused, ${tally.unanswered} unanswered`,
        );
      } catch (err) {
        failed = true;
        console.log(`${entry.name}: FAILED\n${(err as Error).message}\n${String((err as Error).cause ?? '')}`);
      }
    }
    console.log(`(${((Date.now() - started) / 1000).toFixed(1)} s)`);
  }
} finally {
  await s.close();
}
process.exit(failed ? 1 : 0);

/** Every round of the seed, none shrunk: violations grouped by rule and the shape of the request at fault. */
async function survey(entry: Parameters<typeof playRound>[0]): Promise<boolean> {
  const kinds = new Map<string, { count: number; example: string }>();
  const deadline = Date.now() + timeLimitMs;
  let played = 0;
  for (const scripts of fc.sample(roundArbitrary, { seed, numRuns: runs })) {
    if (Date.now() > deadline) break;
    played++;
    const r = await playRound(entry, s.recorder, scripts);
    for (const v of r.violations) {
      const kind = v.shape ? `${v.rule}: ${v.shape}` : v.rule;
      const k = kinds.get(kind) ?? { count: 0, example: `${v.text}\n\n${r.transcript}` };
      k.count++;
      kinds.set(kind, k);
    }
  }
  const byRule = new Map<string, number>();
  for (const [kind, k] of kinds) {
    const rule = kind.split(': ')[0]!;
    byRule.set(rule, (byRule.get(rule) ?? 0) + k.count);
  }
  console.log(`${entry.name}: ${played} rounds, ${kinds.size} kind(s) of violation`);
  for (const [rule, n] of [...byRule].sort((a, b) => b[1] - a[1])) console.log(`  ${n}× ${rule}`);
  for (const [kind, k] of [...kinds].sort((a, b) => b[1].count - a[1].count)) {
    console.log(`\n[${k.count}×] ${kind}\n  e.g. ${k.example.split('\n').join('\n  ')}`);
  }
  return kinds.size > 0;
}
