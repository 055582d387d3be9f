// npm run bench [-- --quick] [--only bulk,small,…] [--binary PATH] … (scripts/bench/flags.ts lists them all)
// Measures tower against the direct path and OpenSSH in one run: scripts/bench/harness.ts runs the
// workloads of scripts/bench/workloads/ and prints their tables.
import { FlagError, parseFlags, USAGE } from './bench/flags.ts';

const argv = process.argv.slice(2);
if (argv.includes('--help') || argv.includes('-h')) {
  console.log(USAGE);
  process.exit(0);
}
let flags;
try {
  flags = parseFlags(argv);
} catch (err) {
  if (!(err instanceof FlagError)) throw err;
  console.error(`bench: ${err.message}\n\n${USAGE}`);
  process.exit(2);
}
// the tests' fixtures run the binary TOWER_BINARY names, read when they load: set it first
process.env.TOWER_BINARY = flags.binary;
const { runBench } = await import('./bench/harness.ts');
try {
  await runBench(flags);
  process.exit(0);
} catch (err) {
  process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
}
