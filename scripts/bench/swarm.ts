// Many agents in one process (tower's own agent code, not the binary): for the scale, outage and replicas
// workloads (scripts/bench/swarm-handle.ts reads what it prints).
// Usage: node swarm.ts PROXY_URL NAME TOKEN N [MAX_RETRY_INTERVAL_MS] → prints {"connected": k, "sessions": s}
// lines as the counts change: agents holding a session, and sessions in all (one per agent and proxy replica).
import { Logger } from '../../src/observe/log.ts';
import { TowerAgent } from '../../src/agent/agent.ts';

const [proxyUrl, name, token, n, cap = '5000'] = process.argv.slice(2) as [string, string, string, string, string?];

/** counts what the agents say (printed with SWARM_LOG=1, every 5 s); the figures come from their stats */
const said = new Map<string, number>();
class QuietLogger extends Logger {
  override info(msg: string): void {
    said.set(msg, (said.get(msg) ?? 0) + 1);
  }
  override warn(msg: string, fields?: Record<string, unknown>): void {
    const key = `${msg} ${String(fields?.err ?? fields?.why ?? '')
      .replace(/\d+/g, 'N')
      .slice(0, 100)}`;
    said.set(key, (said.get(key) ?? 0) + 1);
  }
  override error(msg: string): void {
    said.set(msg, (said.get(msg) ?? 0) + 1);
  }
}
if (process.env.SWARM_LOG) setInterval(() => console.error(JSON.stringify(Object.fromEntries(said))), 5000).unref();

const agents = Array.from(
  { length: Number(n) },
  () =>
    new TowerAgent({
      name,
      token,
      proxyUrl,
      credentials: () => ({ hostPort: '127.0.0.1:9', bearerToken: Buffer.from('unused'), origin: 'bench' }),
      kubesphereService: '127.0.0.1:9',
      keepaliveMs: 60_000,
      maxRetry: 0,
      maxRetryIntervalMs: Number(cap),
      tlsAtAgent: true,
      maxChannels: 4096,
      // loopback to a proxy of this run: nothing to verify
      insecureSkipProxyVerification: true,
      log: new QuietLogger(),
    }),
);
for (const a of agents)
  a.run().catch((err: Error) => {
    console.error(err.message);
    process.exit(1);
  });
let last = '';
setInterval(() => {
  let connected = 0;
  let sessions = 0;
  for (const a of agents) {
    const s = a.stats;
    if (s.connected) connected++;
    sessions += s.sessions;
  }
  const line = JSON.stringify({ connected, sessions });
  if (line !== last) {
    last = line;
    console.log(JSON.stringify({ connected, sessions, rss: process.memoryUsage().rss }));
  }
}, 100);
process.on('SIGTERM', () => {
  for (const a of agents) a.stop();
  setTimeout(() => process.exit(0), 200);
});
