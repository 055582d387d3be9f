import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startMemberCluster, type MemberCluster } from './cluster.ts';
import { kubectl } from './stack.ts';
import { freePort, removeDir, ROOT, tempDir, tower, TowerProcess, waitUntil, type RunResult } from './tower.ts';

/**
 * Leader election and replica Leases on a test's scale (seconds rather than the defaults' tens), so that a replica's
 * death is noticed within the test.
 */
export function fastReplicaFlags(serverLease = '5s'): string[] {
  return [
    '--leader-elect',
    '--leader-elect-lease-duration',
    '4s',
    '--leader-elect-renew-deadline',
    '3s',
    '--leader-elect-retry-period',
    '500ms',
    '--server-lease-duration',
    serverLease,
    '--server-lease-renew-period',
    '1s',
  ];
}

export const CRD_FIXTURE = join(ROOT, 'test', 'fixtures', 'kubesphere-cluster-crd.yaml');

export interface ClusterResource {
  metadata: { name: string; resourceVersion: string; annotations?: Record<string, string> };
  spec?: {
    joinFederation?: boolean;
    externalKubeAPIEnabled?: boolean;
    connection?: {
      type?: string;
      token?: string;
      kubeconfig?: string;
      kubernetesAPIServerPort?: number;
      kubesphereAPIServerPort?: number;
      kubernetesAPIEndpoint?: string;
      kubesphereAPIEndpoint?: string;
      externalKubernetesAPIEndpoint?: string;
    };
  };
  status?: {
    conditions?: { type: string; status: string; reason?: string; message?: string; lastTransitionTime?: string }[];
  };
}

/**
 * A KubeSphere-like host cluster (a real kube-apiserver with KubeSphere's Cluster CRD and the
 * kubesphere-system namespace) and the tower proxies a test runs against it in Kubernetes mode.
 */
export class KubeHost {
  readonly cluster: MemberCluster;
  readonly dir = tempDir('host');
  readonly processes: TowerProcess[] = [];

  private constructor(cluster: MemberCluster) {
    this.cluster = cluster;
  }

  static async start(): Promise<KubeHost> {
    const host = new KubeHost(await startMemberCluster());
    await host.must(['apply', '-f', CRD_FIXTURE]);
    await host.must(['create', 'namespace', 'kubesphere-system']);
    await waitUntil('the Cluster CRD to be served', async () => (await host.kubectl(['get', 'clusters'])).code === 0);
    return host;
  }

  get kubeconfig(): string {
    return this.cluster.kubeconfig;
  }

  kubectl(args: string[], input?: string): Promise<RunResult> {
    return kubectl(this.kubeconfig, args, input);
  }

  async must(args: string[], input?: string): Promise<string> {
    const r = await this.kubectl(args, input);
    if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${r.stderr}`);
    return r.stdout;
  }

  /** Starts `tower proxy --kubeconfig <host>` on free loopback ports; waits for it to serve unless told not to. */
  async startProxy(
    extra: string[] = [],
    opts: { agentPort?: number; wait?: boolean; env?: NodeJS.ProcessEnv } = {},
  ): Promise<TowerProcess & { agentPort: number }> {
    const agentPort = opts.agentPort ?? (await freePort());
    const gatewayPort = await freePort();
    const p = new TowerProcess(
      'proxy',
      [
        'proxy',
        '--kubeconfig',
        this.kubeconfig,
        '--host',
        '127.0.0.1',
        '--port',
        String(agentPort),
        '--gateway-port',
        String(gatewayPort),
        ...extra,
      ],
      { TOWER_HOME: this.dir, ...opts.env },
    );
    this.processes.push(p);
    if (opts.wait !== false) await p.waitFor(/proxy serving/, 60_000);
    return Object.assign(p, { agentPort });
  }

  /**
   * the proxies' host key fingerprint, as they recorded it in the ConfigMap tower-proxy (the key persists in a Secret)
   */
  get fingerprint(): string {
    const r = spawnSync(
      'kubectl',
      [
        '--kubeconfig',
        this.kubeconfig,
        '-n',
        'kubesphere-system',
        'get',
        'configmap',
        'tower-proxy',
        '-o',
        'jsonpath={.data.hostKeyFingerprint}',
      ],
      { encoding: 'utf8', timeout: 30_000 },
    );
    if (r.status !== 0 || !r.stdout.startsWith('SHA256:'))
      throw new Error(`no fingerprint recorded in kubesphere-system/tower-proxy: ${r.stderr}`);
    return r.stdout.trim();
  }

  /** An agent that verifies the proxy by its recorded fingerprint. */
  startAgent(
    name: string,
    token: string,
    agentPort: number,
    member: MemberCluster,
    extra: string[] = [],
  ): TowerProcess {
    const p = new TowerProcess(
      `agent ${name}`,
      [
        'agent',
        '--name',
        name,
        '--token',
        token,
        '--proxy-server',
        `http://127.0.0.1:${agentPort}`,
        '--kubeconfig',
        member.kubeconfig,
        '--max-retry-interval',
        '1s',
        '--proxy-fingerprint',
        this.fingerprint,
        ...extra,
      ],
      {},
    );
    this.processes.push(p);
    return p;
  }

  tower(args: string[]): Promise<RunResult> {
    return tower([...args, '--kubeconfig', this.kubeconfig], { TOWER_HOME: this.dir });
  }

  async get(name: string): Promise<ClusterResource | undefined> {
    const r = await this.kubectl(['get', 'cluster', name, '-o', 'json']);
    if (r.code !== 0) {
      if (/NotFound/.test(r.stderr)) return undefined;
      throw new Error(`kubectl get cluster ${name}: ${r.stderr}`);
    }
    return JSON.parse(r.stdout) as ClusterResource;
  }

  /** Polls the Cluster until `check` holds. */
  waitCluster(
    name: string,
    what: string,
    check: (c: ClusterResource) => boolean,
    timeoutMs = 30_000,
  ): Promise<ClusterResource> {
    let last: ClusterResource | undefined;
    return waitUntil(
      () =>
        `Cluster ${name}: ${what}; ` +
        `last seen ${JSON.stringify(last?.spec?.connection ?? {}).slice(0, 400)} ` +
        `${JSON.stringify(last?.status ?? {})}`,
      async () => {
        last = await this.get(name);
        return last && check(last) ? last : undefined;
      },
      timeoutMs,
      200,
    );
  }

  async getService(name: string): Promise<
    | {
        metadata: { labels?: Record<string, string>; annotations?: Record<string, string> };
        spec: {
          type: string;
          clusterIP: string;
          selector: Record<string, string>;
          ports: { name: string; port: number; targetPort: number; protocol: string }[];
        };
      }
    | undefined
  > {
    const r = await this.kubectl(['-n', 'kubesphere-system', 'get', 'service', name, '-o', 'json']);
    return r.code === 0 ? JSON.parse(r.stdout) : undefined;
  }

  /** Applies a Cluster of type proxy that joins the federation, with extra spec fields. */
  applyCluster(
    name: string,
    spec: Record<string, unknown> = {},
    annotations?: Record<string, string>,
  ): Promise<string> {
    const { connection, ...rest } = spec as { connection?: Record<string, unknown> };
    const doc = {
      apiVersion: 'cluster.kubesphere.io/v1alpha1',
      kind: 'Cluster',
      metadata: { name, ...(annotations ? { annotations } : {}) },
      spec: { joinFederation: true, ...rest, connection: { type: 'proxy', ...connection } },
    };
    const path = join(this.dir, `${name}.json`);
    writeFileSync(path, JSON.stringify(doc));
    return this.must(['apply', '-f', path]);
  }

  async close(): Promise<void> {
    await Promise.all(this.processes.map((p) => p.stop('SIGKILL')));
    await this.cluster.stop();
    removeDir(this.dir);
  }
}

/** A Lease as a tower proxy replica writes it (label, holder, peer address), renewed at `renewed`. */
export function replicaLease(
  name: string,
  holder: string,
  renewed: Date,
  opts: { address?: string; seconds?: number } = {},
): Record<string, unknown> {
  return {
    apiVersion: 'coordination.k8s.io/v1',
    kind: 'Lease',
    metadata: {
      name,
      namespace: 'kubesphere-system',
      labels: { 'app.kubernetes.io/name': 'tower', 'app.kubernetes.io/component': 'proxy-replica' },
      annotations: { 'tower.kubesphere.io/peer-address': opts.address ?? '127.0.0.9:6443' },
    },
    spec: {
      holderIdentity: holder,
      leaseDurationSeconds: opts.seconds ?? 5,
      renewTime: renewed.toISOString().replace('Z', '000Z'),
    },
  };
}

export function condition(
  c: ClusterResource | undefined,
  type: string,
): { status: string; reason?: string; message?: string; lastTransitionTime?: string } | undefined {
  return c?.status?.conditions?.find((x) => x.type === type);
}

export function kubeconfigOf(c: ClusterResource): string {
  return Buffer.from(c.spec?.connection?.kubeconfig ?? '', 'base64').toString('utf8');
}
