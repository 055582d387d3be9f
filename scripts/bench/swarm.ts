// Many agents in one process (tower's own agent code, not the binary): for the scale workload.
// Usage: node swarm.ts PROXY_URL NAME TOKEN N [MAX_RETRY_INTERVAL_MS] → prints {"connected": k} lines as the count changes.
import { Logger } from '../../src/observe/log.ts';
import { TowerAgent } from '../../src/agent/agent.ts';

const [proxyUrl, name, token, n, cap = '5000'] = process.argv.slice(2) as [string, string, string, string, string?];
let connected = 0;

/** counts connections from the agents' own log lines, printing nothing else */
class CountingLogger extends Logger {
  override info(msg: string): void { if (msg === 'connected to proxy') connected++; }
  override warn(msg: string): void { if (msg === 'disconnected from proxy; reconnecting') connected--; }
  override error(): void {}
}

const agents = Array.from({ length: Number(n) }, () => new TowerAgent({
  name, token, proxyUrl,
  credentials: () => ({ hostPort: '127.0.0.1:9', bearerToken: Buffer.from('unused'), origin: 'bench' }),
  kubesphereService: '127.0.0.1:9',
  keepaliveMs: 60_000,
  maxRetry: 0,
  maxRetryIntervalMs: Number(cap),
  tlsAtAgent: true,
  maxChannels: 4096,
  // loopback to a proxy of this run: nothing to verify
  insecureSkipProxyVerification: true,
  log: new CountingLogger(),
}));
for (const a of agents) a.run().catch((err: Error) => { console.error(err.message); process.exit(1); });
let last = -1;
setInterval(() => {
  if (connected !== last) { last = connected; console.log(JSON.stringify({ connected, rss: process.memoryUsage().rss })); }
}, 100);
process.on('SIGTERM', () => { for (const a of agents) a.stop(); setTimeout(() => process.exit(0), 200); });
