import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, run } from './tower.ts';

/** Builds (once) and runs test/interop/go-peer: the Go tower's side of wire protocol v1. */
export async function goPeerBinary(): Promise<string> {
  const r = await run('bash', [join(ROOT, 'scripts', 'go-peer.sh')], { timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`cannot build go-peer:\n${r.stderr}`);
  return r.stdout.trim();
}

export class GoPeer {
  readonly child: ChildProcess;
  output = '';
  readonly exited: Promise<number | null>;

  constructor(binary: string, args: string[]) {
    this.child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const onData = (d: string) => { this.output += d; };
    this.child.stdout!.setEncoding('utf8').on('data', onData);
    this.child.stderr!.setEncoding('utf8').on('data', onData);
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
  }

  async waitFor(re: RegExp, timeoutMs = 20_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.output);
      if (m) return m;
      if (this.child.exitCode !== null || Date.now() > deadline) throw new Error(`go-peer did not print ${re}:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}
