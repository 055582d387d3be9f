import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, tempDir, TowerProcess, waitUntil } from './tower.ts';

export interface HaproxyBackend {
  name: string;
  /** the port each server serves on, and the port its /readyz answers on */
  port: number;
  checkPort: number;
}

/**
 * Debian's haproxy standing in for Kubernetes Services: TCP, round robin, every server
 * health-checked with GET /readyz every 200 ms (down after one failure, up after one success).
 * One frontend on 127.0.0.1 per backend; the servers are `addresses`.
 */
export class Haproxy {
  readonly frontends = new Map<string, number>();
  readonly process: TowerProcess;
  readonly statsPort: number;

  private constructor(process: TowerProcess, statsPort: number, frontends: Map<string, number>) {
    this.process = process;
    this.statsPort = statsPort;
    this.frontends = frontends;
  }

  static async start(servers: { name: string; address: string }[], backends: HaproxyBackend[]): Promise<Haproxy> {
    const statsPort = await freePort();
    const frontends = new Map<string, number>();
    const lines = [
      'global',
      '  maxconn 4000',
      'defaults',
      '  mode tcp',
      '  timeout connect 2s',
      '  timeout client 1h',
      '  timeout server 1h',
      '  timeout check 1s',
      'listen stats',
      `  bind 127.0.0.1:${statsPort}`,
      '  mode http',
      '  stats enable',
      '  stats uri /stats',
    ];
    for (const b of backends) {
      const port = await freePort();
      frontends.set(b.name, port);
      lines.push(`frontend ${b.name}`, `  bind 127.0.0.1:${port}`, `  default_backend ${b.name}`);
      lines.push(
        `backend ${b.name}`,
        '  balance roundrobin',
        '  option httpchk GET /readyz',
        '  http-check expect status 200',
        `  default-server check port ${b.checkPort} inter 200ms fall 1 rise 1`,
      );
      for (const s of servers) lines.push(`  server ${s.name} ${s.address}:${b.port}`);
    }
    const dir = tempDir('haproxy');
    const config = join(dir, 'haproxy.cfg');
    writeFileSync(config, lines.join('\n') + '\n');
    const p = new TowerProcess('haproxy', ['-f', config, '-db'], {}, 'haproxy');
    const h = new Haproxy(p, statsPort, frontends);
    await waitUntil('haproxy to answer its stats', () =>
      h.states().then(
        () => true,
        () => false,
      ),
    );
    return h;
  }

  /** "UP", "DOWN", … per backend/server, from haproxy's own stats */
  async states(): Promise<Map<string, string>> {
    const r = await fetch(`http://127.0.0.1:${this.statsPort}/stats;csv`);
    const rows = (await r.text()).split('\n').filter((l) => l && !l.startsWith('#'));
    const out = new Map<string, string>();
    for (const row of rows) {
      const cols = row.split(',');
      if (cols[1] === 'FRONTEND' || cols[1] === 'BACKEND') continue;
      out.set(`${cols[0]}/${cols[1]}`, cols[17] ?? '');
    }
    return out;
  }

  /** Waits until `server` is `state` (UP or DOWN) in every backend; returns when that was seen. */
  async waitState(server: string, state: 'UP' | 'DOWN', timeoutMs = 20_000): Promise<number> {
    await waitUntil(
      `haproxy to see ${server} ${state}`,
      async () => {
        const states = await this.states();
        const mine = [...states].filter(([k]) => k.endsWith(`/${server}`));
        return mine.length > 0 && mine.every(([, v]) => v.startsWith(state));
      },
      timeoutMs,
      50,
    );
    return Date.now();
  }

  stop(): Promise<number | null> {
    return this.process.stop('SIGKILL');
  }
}
