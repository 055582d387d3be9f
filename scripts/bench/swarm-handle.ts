// The bench's side of scripts/bench/swarm.ts (many agents in one process): what they hold, as the
// swarm prints it, and waiting on it.
import type { TowerProcess } from '../../test/support/tower.ts';
import { benchScript, type Bench } from './context.ts';

const POLL_MS = 20;

export class Swarm {
  readonly process: TowerProcess;

  private constructor(process: TowerProcess) {
    this.process = process;
  }

  /** `n` agents of cluster `name` dialing `url`, each backing off up to `maxRetryIntervalMs` (swarm.ts: 5 s) */
  static start(bench: Bench, url: string, name: string, token: string, n: number, maxRetryIntervalMs?: number): Swarm {
    const args = [benchScript('swarm.ts'), url, name, token, String(n)];
    if (maxRetryIntervalMs !== undefined) args.push(String(maxRetryIntervalMs));
    return new Swarm(bench.spawn('swarm', process.execPath, args));
  }

  /** the last counts printed: agents holding a session, and sessions in all (one per agent and replica) */
  counts(): { connected: number; sessions: number } {
    const last = [...this.process.output.matchAll(/"connected":(\d+),"sessions":(\d+)/g)].at(-1);
    return { connected: Number(last?.[1] ?? 0), sessions: Number(last?.[2] ?? 0) };
  }
  connected(): number {
    return this.counts().connected;
  }

  /** Seconds until `done()` holds, polled every 20 ms; NaN after `limitMs` or once the swarm has exited. */
  async until(done: () => boolean, limitMs: number): Promise<number> {
    const s = Date.now();
    while (!done()) {
      if (Date.now() - s > limitMs || !this.process.running) return NaN;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    return (Date.now() - s) / 1000;
  }

  /** the swarm process's own RSS as it last printed it, MiB */
  rssMiB(): number {
    const lastLine = [...this.process.output.matchAll(/\{[^\n]*\}/g)].at(-1)?.[0] ?? '';
    return Number(/"rss":(\d+)/.exec(lastLine)?.[1] ?? 0) / 2 ** 20;
  }

  /** what the agents said so far, counted (printed with SWARM_LOG=1) */
  said(): string {
    const lines = this.process.output.split('\n');
    return lines.filter((l) => l.startsWith('{') && !l.startsWith('{"connected"')).at(-1) ?? '';
  }

  stop(): void {
    this.process.child.kill('SIGTERM');
  }
}
