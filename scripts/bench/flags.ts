// The bench's flags, parsed once at the edge into typed values; every workload reads them from here.
import { binary as builtBinary } from '../lib.mjs';

/** the workloads --only names, in the order they run */
export const WORKLOAD_NAMES = [
  'bulk',
  'small',
  'floor',
  'hops',
  'watch',
  'cold',
  'soak',
  'idle',
  'scale',
  'outage',
  'metrics',
  'clusters',
  'replicas',
  'stalled',
  'policy',
] as const;
export type WorkloadName = (typeof WORKLOAD_NAMES)[number];

export interface BenchFlags {
  /** shorter settings throughout (a smaller bulk, fewer seconds, agents and clusters) */
  quick: boolean;
  only: ReadonlySet<WorkloadName>;
  /** agents of the scale, outage, replicas and metrics workloads */
  agents: number;
  /** Cluster resources of the Kubernetes-mode workload */
  clusters: number;
  /** where to write every figure as JSON as well */
  json?: string;
  /** how long the proxy stays down in the outage workload: long enough for every agent's backoff to reach its cap */
  outageSeconds: number;
  /** the proxy and agent write V8 CPU profiles there (node --cpu-prof) */
  profile?: string;
  /** the tower binary measured: dist/tower (built when stale), or another build given with --binary */
  binary: string;
  binaryGiven: boolean;
  /** extra flags for the measured agent */
  agentArgs: string[];
  soakRequests: number;
  /** every Nth soak request on a fresh connection */
  soakFreshEvery: number;
}

export const USAGE = `npm run bench [-- FLAGS]
  --quick                   shorter settings throughout
  --only ${WORKLOAD_NAMES.join(',')}
                            the workloads to run (default: all)
  --agents N                agents of scale, outage, replicas and metrics (1000; quick 100)
  --clusters N              Clusters applied at once in Kubernetes mode (200; quick 50)
  --outage-seconds N        how long the proxy is down in the outage workload (120; quick 45)
  --soak-requests N         requests of the soak (1000000; quick 100000)
  --soak-fresh-every N      every Nth soak request on a fresh connection (50)
  --agent-args "FLAGS"      extra flags for the measured agent, e.g. "--tls-at-agent false"
  --binary PATH             measure another build of tower, e.g. an older commit's
  --profile DIR             V8 CPU profiles of the proxy and agent in DIR
  --json FILE               every figure as JSON as well`;

const VALUED = [
  '--only',
  '--agents',
  '--clusters',
  '--outage-seconds',
  '--soak-requests',
  '--soak-fresh-every',
  '--agent-args',
  '--binary',
  '--profile',
  '--json',
];

export class FlagError extends Error {}

export function parseFlags(argv: string[]): BenchFlags {
  const values = new Map<string, string>();
  let quick = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') quick = true;
    else if (VALUED.includes(a)) {
      const v = argv[++i];
      if (v === undefined) throw new FlagError(`${a} needs a value`);
      // the first occurrence counts
      if (!values.has(a)) values.set(a, v);
    } else throw new FlagError(`unknown flag ${a}`);
  }
  const count = (name: string, fallback: number): number => {
    const v = values.get(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new FlagError(`${name} takes a number, not "${v}"`);
    return n;
  };
  const only = (values.get('--only') ?? WORKLOAD_NAMES.join(',')).split(',');
  const unknown = only.filter((w) => !(WORKLOAD_NAMES as readonly string[]).includes(w));
  if (unknown.length) throw new FlagError(`--only: no workload ${unknown.join(', ')}`);
  const binary = values.get('--binary');
  return {
    quick,
    only: new Set(only as WorkloadName[]),
    agents: count('--agents', quick ? 100 : 1000),
    clusters: count('--clusters', quick ? 50 : 200),
    json: values.get('--json'),
    outageSeconds: count('--outage-seconds', quick ? 45 : 120),
    profile: values.get('--profile'),
    binary: binary ?? builtBinary,
    binaryGiven: binary !== undefined,
    agentArgs: (values.get('--agent-args') ?? '').split(' ').filter(Boolean),
    soakRequests: count('--soak-requests', quick ? 100_000 : 1_000_000),
    soakFreshEvery: count('--soak-fresh-every', 50),
  };
}
