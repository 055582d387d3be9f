import { join } from 'node:path';
import {
  credentialsIn,
  credentialsOf,
  plainConnector,
  tlsConnector,
  type Client,
  type EntryPoint,
  type ExpectedIdentity,
} from './framing-harness.ts';
import { condition, fastReplicaFlags, KubeHost } from './kube.ts';
import { RecordingUpstream } from './recording-upstream.ts';
import { Stack } from './stack.ts';
import { freePort, TowerProcess, waitUntil } from './tower.ts';

/** the two users of every round, each with a group of their own */
export const USERS = [
  { name: 'jane', group: 'viewers' },
  { name: 'bob', group: 'devs' },
] as const;

/** The member's agents: one that proves itself with a bearer token, one with a client certificate. */
const CLUSTERS = [
  { name: 'beta', agent: 'token' },
  { name: 'gamma', agent: 'cert' },
] as const;

export interface FramingStack {
  recorder: RecordingUpstream;
  stack: Stack;
  /** the shared gateway, once per cluster */
  entries: EntryPoint[];
  close(): Promise<void>;
}

/**
 * `tower proxy` in file mode with clusters beta (token agent) and gamma (client-certificate
 * agent), both members being one recording upstream (its plain port as their ks-apiserver), and
 * `tower kubeconfig <cluster> --user <u> --group <g>` for each user.
 */
export async function startFileModeStack(): Promise<FramingStack> {
  const recorder = await RecordingUpstream.start();
  const stack = new Stack();
  const close = async () => {
    await stack.close();
    await recorder.close();
  };
  try {
    await stack.startProxy();
    const entries: EntryPoint[] = [];
    for (const c of CLUSTERS) {
      const { token } = await stack.token(c.name);
      const memberKubeconfig = recorder.writeKubeconfig(join(stack.dataDir, `${c.name}-member.kubeconfig`), c.agent);
      await stack
        .startAgent(c.name, token, memberKubeconfig, ['--kubesphere-service', recorder.ksHostPort])
        .waitFor(/connected to proxy/);
      const clients: Client[] = [];
      for (const u of USERS) {
        const creds = credentialsOf(await stack.kubeconfig(c.name, ['--user', u.name, '--group', u.group]));
        const identity: ExpectedIdentity = {
          server: 'kube-apiserver',
          auth: c.agent,
          // a token agent puts its own Authorization on every request; a certificate agent none
          authorization: c.agent === 'token' ? `Bearer ${recorder.token}` : undefined,
          impersonateUser: [u.name],
          impersonateGroup: [u.group],
        };
        clients.push({
          name: u.name,
          connect: tlsConnector(creds.server.hostname, Number(creds.server.port), creds),
          headers: [],
          identity,
        });
      }
      entries.push({
        name: `the shared gateway, cluster ${c.name} (${c.agent} agent)`,
        host: `127.0.0.1:${stack.gatewayPort}`,
        prefix: `/clusters/${c.name}`,
        cluster: c.name,
        clients,
        judgesImpersonation: true,
      });
    }
    return { recorder, stack, entries, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * loopback addresses of their own, so that the cluster ports (the same number on both replicas) meet no other test's
 */
const REPLICAS = { r1: '127.0.30.1', r2: '127.0.30.2' } as const;
type ReplicaId = keyof typeof REPLICAS;
const KUBE_CLUSTER = 'delta';
const REPLICA_FLAGS = [...fastReplicaFlags(), '--shutdown-delay', '0s', '--shutdown-grace', '5s'];
const START_TIMEOUT_MS = 60_000;

/**
 * Kubernetes mode: a host kube-apiserver with KubeSphere's Cluster CRD, two proxy replicas, and one
 * token agent of cluster delta that dials r1 only, so that r2 forwards every request to r1. The
 * entry points: each replica's cluster kubernetes port (TLS, client certificates) and ks-apiserver
 * port (plain HTTP, the client's own Authorization), and r2's shared gateway.
 */
export async function startKubernetesModeStack(): Promise<Omit<FramingStack, 'stack'> & { host: KubeHost }> {
  const [host, recorder] = await Promise.all([KubeHost.start(), RecordingUpstream.start()]);
  const close = async () => {
    await host.close();
    await recorder.close();
  };
  try {
    const [agentPort, gatewayPort] = await Promise.all([freePort(), freePort()]);
    const replicas = new Map<ReplicaId, TowerProcess>();
    for (const id of Object.keys(REPLICAS) as ReplicaId[]) {
      const p = new TowerProcess(
        `proxy ${id}`,
        [
          'proxy',
          '--kubeconfig',
          host.kubeconfig,
          '--host',
          REPLICAS[id],
          '--port',
          String(agentPort),
          '--gateway-port',
          String(gatewayPort),
          '--server-id',
          id,
          ...REPLICA_FLAGS,
        ],
        { TOWER_HOME: host.dir },
      );
      host.processes.push(p);
      replicas.set(id, p);
      // one after the other: the first makes tower's CA and host key in the host cluster, the second loads them
      await p.waitFor(/proxy serving/, START_TIMEOUT_MS);
    }
    await host.applyCluster(KUBE_CLUSTER);
    const c = await host.waitCluster(
      KUBE_CLUSTER,
      'initialized',
      (x) => condition(x, 'Initialized')?.status === 'True' && Boolean(x.spec?.connection?.token),
      START_TIMEOUT_MS,
    );
    const { token, kubernetesAPIServerPort: kubePort, kubesphereAPIServerPort: ksPort } = c.spec!.connection!;
    for (const p of replicas.values())
      await p.waitFor(new RegExp(`serving cluster ports cluster=${KUBE_CLUSTER} `), START_TIMEOUT_MS);
    // r2 forwards only to a replica it counts live
    await waitUntil(
      'both replicas to count two replicas',
      async () => {
        for (const address of Object.values(REPLICAS)) {
          if (!/^tower_proxy_replicas 2$/m.test(await (await fetch(`http://${address}:${agentPort}/metrics`)).text()))
            return false;
        }
        return true;
      },
      START_TIMEOUT_MS,
      250,
    );
    const r1 = replicas.get('r1')!;
    const mark = r1.output.length;
    const agentKubeconfig = recorder.writeKubeconfig(join(host.dir, 'member-agent.kubeconfig'), 'token');
    host.processes.push(
      new TowerProcess(
        `agent ${KUBE_CLUSTER}`,
        [
          'agent',
          '--name',
          KUBE_CLUSTER,
          '--token',
          token!,
          '--proxy-server',
          `http://${REPLICAS.r1}:${agentPort}`,
          '--kubeconfig',
          agentKubeconfig,
          '--kubesphere-service',
          recorder.ksHostPort,
          '--max-retry-interval',
          '1s',
          '--proxy-fingerprint',
          host.fingerprint,
        ],
        {},
      ),
    );
    await r1.waitFor(new RegExp(`agent connected.*cluster=${KUBE_CLUSTER}\\b`), START_TIMEOUT_MS, mark);
    await host.waitCluster(
      KUBE_CLUSTER,
      'AgentAvailable',
      (x) => condition(x, 'AgentAvailable')?.status === 'True',
      START_TIMEOUT_MS,
    );

    const certificates: { user: (typeof USERS)[number]; creds: ReturnType<typeof credentialsIn> }[] = [];
    for (const u of USERS) {
      const issued = await host.tower([
        'kubeconfig',
        KUBE_CLUSTER,
        '--gateway',
        '--user',
        u.name,
        '--group',
        u.group,
        '--server',
        `https://${REPLICAS.r1}:${gatewayPort}/clusters/${KUBE_CLUSTER}`,
      ]);
      if (issued.code !== 0)
        throw new Error(`tower kubeconfig ${KUBE_CLUSTER} --user ${u.name} failed: ${issued.stderr}`);
      certificates.push({ user: u, creds: credentialsIn(issued.stdout) });
    }
    const certificateClients = (address: string, port: number): Client[] =>
      certificates.map(({ user, creds }) => ({
        name: user.name,
        connect: tlsConnector(address, port, creds, true),
        headers: [],
        identity: {
          server: 'kube-apiserver',
          auth: 'token',
          authorization: `Bearer ${recorder.token}`,
          impersonateUser: [user.name],
          impersonateGroup: [user.group],
        },
      }));
    // no certificate on the ks-apiserver port: each caller's own bearer token, which ks-apiserver judges, must arrive
    // as it is
    const ksClients = (address: string): Client[] =>
      USERS.map((u) => ({
        name: u.name,
        connect: plainConnector(address, ksPort!),
        headers: [`Authorization: Bearer ks-token-of-${u.name}`],
        identity: {
          server: 'ks-apiserver',
          auth: 'none',
          authorization: `Bearer ks-token-of-${u.name}`,
          impersonateUser: [],
          impersonateGroup: [],
        },
      }));
    const via = (id: ReplicaId) => (id === 'r1' ? 'r1, which holds the agent' : 'r2, forwarded to r1');
    const entries: EntryPoint[] = [];
    for (const id of Object.keys(REPLICAS) as ReplicaId[]) {
      const address = REPLICAS[id];
      entries.push({
        name: `the kubernetes port of cluster ${KUBE_CLUSTER} on ${via(id)}`,
        host: `${address}:${kubePort}`,
        prefix: '',
        cluster: KUBE_CLUSTER,
        clients: certificateClients(address, kubePort!),
        judgesImpersonation: true,
      });
      entries.push({
        name: `the ks-apiserver port of cluster ${KUBE_CLUSTER} on ${via(id)}`,
        host: `${address}:${ksPort}`,
        prefix: '',
        cluster: KUBE_CLUSTER,
        clients: ksClients(address),
        judgesImpersonation: false,
      });
    }
    entries.push({
      name: `the shared gateway, cluster ${KUBE_CLUSTER}, on ${via('r2')}`,
      host: `${REPLICAS.r2}:${gatewayPort}`,
      prefix: `/clusters/${KUBE_CLUSTER}`,
      cluster: KUBE_CLUSTER,
      clients: certificateClients(REPLICAS.r2, gatewayPort),
      judgesImpersonation: true,
    });
    return { host, recorder, entries, close };
  } catch (err) {
    await close();
    throw err;
  }
}
