// clusters: Kubernetes mode on its own: N Cluster resources applied at once to a real kube-apiserver
// (scripts/test-cluster.sh), until the proxy has initialized all of them; then a restart of the proxy,
// which must write nothing.
import { freePort, TowerProcess } from '../../../test/support/tower.ts';
import type { Workload } from '../context.ts';
import { fmt } from '../format.ts';
import { startKubeHost } from '../kube-host.ts';
import { cpuSeconds, rssMiB, sleep } from '../proc.ts';

const SERVING_LIMIT_MS = 60_000;
const RESTART_LIMIT_MS = 120_000;
const INITIALIZED_LIMIT_MS = 300_000;
const POLL_MS = 250;
/** after the restart: long enough for any write it would make */
const QUIET_MS = 3000;

export interface ClustersResult {
  clusters: number;
  initSeconds: number;
  perSecond: number;
  cpuInit: number;
  rss: number;
  restartSeconds: number;
  writesAfterRestart: number;
  allocations: number;
}

interface ClusterList {
  items: { status?: { conditions?: { type: string; status: string }[] } }[];
}

export const clusters: Workload<ClustersResult> = {
  name: 'clusters',
  async run(bench) {
    const n = bench.flags.clusters;
    const host = await startKubeHost(bench);
    const [agentPort, gatewayPort] = [await freePort(), await freePort()];
    const proxyArgs = ['proxy', '--kubeconfig', host.kubeconfig, '--host', '127.0.0.1'];
    proxyArgs.push('--port', String(agentPort), '--gateway-port', String(gatewayPort), '-v', '1');
    const startProxy = () => {
      const p = new TowerProcess('proxy', proxyArgs, bench.towerEnv);
      host.processes.push(p);
      return p;
    };
    let proxy = startProxy();
    await proxy.waitFor(/proxy serving/, SERVING_LIMIT_MS);
    const cpu0 = cpuSeconds(proxy.pid);
    const items = Array.from({ length: n }, (_, i) => ({
      apiVersion: 'cluster.kubesphere.io/v1alpha1',
      kind: 'Cluster',
      metadata: { name: `c${i}` },
      spec: { joinFederation: true, connection: { type: 'proxy' } },
    }));
    const t0 = Date.now();
    const applied = await host.kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));
    if (applied.code !== 0) throw new Error(`kubectl apply: ${applied.stderr}`);
    const initializedCount = async () => {
      const list = JSON.parse(await host.must(['get', 'clusters', '-o', 'json'])) as ClusterList;
      const initialized = (c: ClusterList['items'][number]) =>
        c.status?.conditions?.some((x) => x.type === 'Initialized' && x.status === 'True');
      return list.items.filter(initialized).length;
    };
    while ((await initializedCount()) < n) {
      if (Date.now() - t0 > INITIALIZED_LIMIT_MS)
        throw new Error('the proxy did not initialize every Cluster within 5 minutes');
      await sleep(POLL_MS);
    }
    const initSeconds = (Date.now() - t0) / 1000;
    await proxy.waitFor(new RegExp(`serving cluster ports cluster=c${n - 1} `), SERVING_LIMIT_MS);
    const allocations = (proxy.output.match(/allocated ports cluster=/g) ?? []).length;
    const cpuInit = cpuSeconds(proxy.pid) - cpu0;
    const rss = rssMiB(proxy.pid);
    bench.log(
      `${n} Clusters initialized in ${initSeconds.toFixed(1)} s ` +
        `(proxy CPU ${cpuInit.toFixed(1)} s, RSS ${rss.toFixed(0)} MiB)`,
    );
    await proxy.stop('SIGTERM');
    const r0 = Date.now();
    proxy = startProxy();
    await proxy.waitFor(/proxy serving/, RESTART_LIMIT_MS);
    const restartSeconds = (Date.now() - r0) / 1000;
    // a restart with nothing to do writes nothing
    await sleep(QUIET_MS);
    const writes = (proxy.output.match(/updated Cluster|created Service|updated Service/g) ?? []).length;
    await proxy.stop('SIGTERM');
    await bench.dispose(host);
    return {
      clusters: n,
      initSeconds,
      perSecond: n / initSeconds,
      cpuInit,
      rss,
      restartSeconds,
      writesAfterRestart: writes,
      allocations,
    };
  },
  table(c) {
    return [
      '| Kubernetes mode (tower only) | value |',
      '| --- | ---: |',
      `| Clusters applied at once (one kubectl apply) | ${c.clusters} |`,
      `| all initialized (ports, token, Service, endpoints, condition), s | ${fmt(c.initSeconds)} |`,
      `| Clusters initialized per second | ${fmt(c.perSecond)} |`,
      `| port allocations (one per Cluster when none is repeated) | ${c.allocations} |`,
      `| proxy CPU for it, s | ${fmt(c.cpuInit)} |`,
      `| proxy RSS serving them (two ports each), MiB | ${fmt(c.rss)} |`,
      `| restart to serving again, s | ${fmt(c.restartSeconds)} |`,
      `| API writes after that restart | ${c.writesAfterRestart} |`,
    ];
  },
};
