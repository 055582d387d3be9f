// replicas: N agents of one cluster and three proxy replicas in Kubernetes mode (127.0.0.2-4) behind
// haproxy, as a Service: how long until every agent holds a session to every replica, what each replica
// carries, and how long after a replica restarts until every agent holds all three again.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, TowerProcess } from '../../../test/support/tower.ts';
import type { Workload } from '../context.ts';
import { fmt } from '../format.ts';
import { startKubeHost } from '../kube-host.ts';
import { rssMiB, sleep, waitPort } from '../proc.ts';
import { Swarm } from '../swarm-handle.ts';

const REPLICA_ADDRESSES = ['127.0.0.2', '127.0.0.3', '127.0.0.4'];
/** the swarm's agents back off up to this */
const MAX_RETRY_INTERVAL_MS = 5000;
const SERVING_LIMIT_MS = 60_000;
const SESSIONS_LIMIT_MS = 300_000;
const DRAIN_LIMIT_MS = 60_000;
const TOKEN_POLLS = 300;
const SETTLE_MS = 2000;
/** haproxy's connections: as many as descriptors allow (two each), up to this */
const HAPROXY_MAXCONN = 20_000;

export interface ReplicasResult {
  agents: number;
  firstSession: number;
  everySession: number;
  perReplica: number[];
  rss: number[];
  rejoin: number;
  swarmRss: number;
}

/** haproxy as the agents' Service: round robin over the replicas, health-checked on /readyz */
function haproxyConfig(frontPort: number, agentPort: number): string {
  const nofile = Number(spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).stdout.trim()) || 4096;
  return [
    'global',
    `  maxconn ${Math.min(HAPROXY_MAXCONN, Math.floor((nofile - 200) / 2))}`,
    'defaults',
    '  mode tcp',
    '  timeout connect 2s',
    '  timeout client 1h',
    '  timeout server 1h',
    '  timeout check 1s',
    'frontend agents',
    `  bind 127.0.0.1:${frontPort}`,
    '  default_backend agents',
    'backend agents',
    '  balance roundrobin',
    '  option httpchk GET /readyz',
    '  http-check expect status 200',
    '  default-server check inter 200ms fall 1 rise 1',
    ...REPLICA_ADDRESSES.map((a, i) => `  server r${i + 1} ${a}:${agentPort}`),
    '',
  ].join('\n');
}

export const replicas: Workload<ReplicasResult> = {
  name: 'replicas',
  async run(bench) {
    const agents = bench.flags.agents;
    const host = await startKubeHost(bench);
    await host.applyCluster('swarm');
    const [agentPort, gatewayPort] = [await freePort(), await freePort()];
    const startReplica = async (i: number) => {
      const args = ['proxy', '--kubeconfig', host.kubeconfig, '--host', REPLICA_ADDRESSES[i]!];
      args.push('--port', String(agentPort), '--gateway-port', String(gatewayPort), '--server-id', `r${i + 1}`);
      args.push('--leader-elect', '--server-lease-duration', '10s', '--server-lease-renew-period', '2s');
      const p = new TowerProcess(`proxy r${i + 1}`, args, bench.towerEnv);
      host.processes.push(p);
      await p.waitFor(/proxy serving/, SERVING_LIMIT_MS);
      return p;
    };
    const proxies = await Promise.all(REPLICA_ADDRESSES.map((_, i) => startReplica(i)));
    let token = '';
    for (let i = 0; i < TOKEN_POLLS && !token; i++) {
      const r = await host.kubectl(['get', 'cluster', 'swarm', '-o', 'jsonpath={.spec.connection.token}']);
      token = r.stdout.trim();
      if (!token) await sleep(100);
    }
    const frontPort = await freePort();
    const cfg = join(bench.work, 'haproxy.cfg');
    writeFileSync(cfg, haproxyConfig(frontPort, agentPort));
    const haproxy = bench.spawn('haproxy', 'haproxy', ['-f', cfg, '-db']);
    await waitPort(frontPort);
    const url = `ws://127.0.0.1:${frontPort}`;
    const swarm = Swarm.start(bench, url, 'swarm', token, agents, MAX_RETRY_INTERVAL_MS);
    const want = agents * REPLICA_ADDRESSES.length;
    const sessions = () => swarm.counts().sessions;
    const firstSession = await swarm.until(() => swarm.connected() === agents, SESSIONS_LIMIT_MS);
    const everySession = firstSession + (await swarm.until(() => sessions() === want, SESSIONS_LIMIT_MS));
    await sleep(SETTLE_MS);
    const perReplica = await Promise.all(
      REPLICA_ADDRESSES.map(async (a) => {
        const text = await (await fetch(`http://${a}:${agentPort}/metrics`)).text();
        return Number(/^tower_proxy_agents_connected\{cluster="swarm"\} (\d+)$/m.exec(text)?.[1] ?? 0);
      }),
    );
    const rss = proxies.map((p) => rssMiB(p.pid));
    // SWARM_LOG=1: what the agents said so far, counted
    const said = () => {
      if (process.env.SWARM_LOG) bench.log(swarm.said());
    };
    said();
    bench.log(
      `${agents} agents × 3 replicas: each agent held one session after ${firstSession.toFixed(1)} s, ` +
        `all three after ${everySession.toFixed(1)} s; sessions per replica ${perReplica.join('/')}, ` +
        `RSS ${rss.map((r) => r.toFixed(0)).join('/')} MiB`,
    );
    // a rolling restart of one replica: SIGTERM (drain), start again, until every agent holds it again
    await proxies[1]!.stop('SIGTERM');
    await swarm.until(() => sessions() === want - agents, DRAIN_LIMIT_MS);
    proxies[1] = await startReplica(1);
    const rejoin = await swarm.until(() => sessions() === want, SESSIONS_LIMIT_MS);
    const swarmRss = swarm.rssMiB();
    bench.log(`a restarted replica held by every agent again ${rejoin.toFixed(1)} s after it served`);
    said();
    swarm.stop();
    for (const p of [...proxies, haproxy]) await p.stop('SIGTERM');
    await bench.dispose(host);
    return { agents, firstSession, everySession, perReplica, rss, rejoin, swarmRss };
  },
  table(r) {
    return [
      `| replicas (tower only, ${r.agents} agents of one cluster, 3 replicas behind haproxy) | value |`,
      '| --- | ---: |',
      `| every agent holds a session, s | ${fmt(r.firstSession)} |`,
      `| every agent holds a session to all three replicas, s | ${fmt(r.everySession)} |`,
      `| sessions per replica | ${r.perReplica.join(' / ')} |`,
      `| RSS per replica, MiB | ${r.rss.map((x) => fmt(x)).join(' / ')} |`,
      `| a replica restarted (SIGTERM, start): every agent holds it again, s after it served | ${fmt(r.rejoin)} |`,
    ];
  },
};
