// policy: what the member policy costs the agent per request. Small requests at concurrency 1 and 64
// through two tunnels in turn, the bench's own and one whose agent judges each request by a policy
// (45 rules that match nothing, the read-only preset, and last a rule that allows the bench's own
// path, so that every request reads them all): requests per second, p50, p99 and the agent's CPU per
// request, and their ratios.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parsePolicy, presetPolicy } from '../../../src/agent/policy.ts';
import type { Bench, Endpoint, Workload } from '../context.ts';
import { ratio } from '../format.ts';
import { sampled } from '../proc.ts';
import { Tunnel } from '../tunnel.ts';
import { SMALL_CONCURRENCY } from './small.ts';

/** rules that match no request of the bench: each is read and passed over */
const MISSED_RULES = 45;
/** both arms run this many times, in turn (ABBA), so that the machine's drift falls on both */
const ROUNDS = 4;

interface Arm {
  rps: number;
  p50: number;
  p99: number;
  /** µs of the agent's CPU per request */
  agentUs: number;
}
type Figures = Record<number, { plain: Arm; policy: Arm }>;
export interface PolicyResult {
  rules: number;
  figures: Figures;
}

function policyText(): string {
  const missed = Array.from(
    { length: MISSED_RULES },
    (_, i) => `  - name: nobody-${i}\n    action: deny\n    users: [nobody-${i}]\n    resources: [pods]\n`,
  ).join('');
  const last = '  - name: the-bench\n    action: allow\n    verbs: [get]\n    nonResourceURLs: [/small]\n';
  return presetPolicy('read-only').replace('rules:\n', `rules:\n${missed}`) + last;
}

async function arm(bench: Bench, ep: Endpoint, agentPid: number, concurrency: number): Promise<Arm> {
  const seconds = bench.flags.quick ? 3 : 8;
  const { r, cpu } = await sampled([agentPid], () =>
    bench.load(ep, { mode: 'small', path: '/small', concurrency, seconds }),
  );
  return { rps: r.requests! / r.seconds!, p50: r.p50!, p99: r.p99!, agentUs: (cpu[0]! * 1e6) / r.requests! };
}

const mean = (arms: Arm[]): Arm => {
  const m = (k: keyof Arm) => arms.reduce((a, x) => a + x[k], 0) / arms.length;
  return { rps: m('rps'), p50: m('p50'), p99: m('p99'), agentUs: m('agentUs') };
};

export const policy: Workload<PolicyResult> = {
  name: 'policy',
  async run(bench) {
    const file = join(bench.work, 'member-policy.yaml');
    writeFileSync(file, policyText());
    const judged = await Tunnel.start(bench, 'judged', ['--policy', file]);
    const figures: Figures = {};
    for (const c of SMALL_CONCURRENCY) {
      const plain: Arm[] = [];
      const withPolicy: Arm[] = [];
      // in turn, each first in every other round: neither gains from going second
      for (let i = 0; i < ROUNDS; i++) {
        const runs = [
          async () => plain.push(await arm(bench, bench.tunnel.endpoint, bench.tunnel.agent.pid, c)),
          async () => withPolicy.push(await arm(bench, judged.endpoint, judged.agent.pid, c)),
        ];
        if (i % 2) runs.reverse();
        for (const run of runs) await run();
      }
      figures[c] = { plain: mean(plain), policy: mean(withPolicy) };
    }
    // with --profile, a clean exit writes the judged agent's profile too
    if (bench.flags.profile) await Promise.all([judged.proxy.stop('SIGTERM'), judged.agent.stop('SIGTERM')]);
    return { rules: parsePolicy(policyText()).rules.length, figures };
  },
  table(result) {
    const lines = [
      `| member policy (${result.rules} rules, all read per request), mean of ${ROUNDS} runs each | without | ` +
        'with | with/without |',
      '| --- | ---: | ---: | ---: |',
    ];
    for (const c of SMALL_CONCURRENCY) {
      const f = result.figures[c];
      if (!f) continue;
      const row = (what: string, k: keyof Arm, digits: number) =>
        lines.push(
          `| small c=${c} ${what} | ${f.plain[k].toFixed(digits)} | ${f.policy[k].toFixed(digits)} | ` +
            `${ratio(f.policy[k], f.plain[k])} |`,
        );
      row('requests/s', 'rps', 0);
      row('p50 ms', 'p50', 3);
      row('p99 ms', 'p99', 3);
      row('agent CPU µs per request', 'agentUs', 1);
    }
    return lines;
  },
};
