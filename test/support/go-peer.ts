import { join } from 'node:path';
import { ROOT, run, TowerProcess } from './tower.ts';

/** Builds (once) test/interop/go-peer, the Go tower's side of wire protocol v1; returns its path. */
export async function goPeerBinary(): Promise<string> {
  const r = await run('bash', [join(ROOT, 'scripts', 'go-peer.sh')], { timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`cannot build go-peer:\n${r.stderr}`);
  return r.stdout.trim();
}

/** A running go-peer, watched like a tower process. */
export function startGoPeer(binary: string, args: string[]): TowerProcess {
  return new TowerProcess(`go-peer ${args[0]}`, args, {}, binary);
}
