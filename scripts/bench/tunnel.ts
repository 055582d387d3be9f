// The tunnel path: a tower proxy (the tests' Stack, on its own data dir) and agents of it that reach
// the bench's upstream, and a client's endpoint through the gateway for each of their clusters.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { Stack } from '../../test/support/stack.ts';
import { TowerProcess } from '../../test/support/tower.ts';
import type { Bench, Endpoint } from './context.ts';

/** what the agent adds to every request, as a ServiceAccount's token would be (the upstream ignores it) */
const SERVICE_ACCOUNT_TOKEN = 'bench-service-account-token';
/** how long a restart waits for every agent to have seen the proxy go */
const GONE_LIMIT_MS = 10_000;

export class Tunnel {
  readonly stack: Stack;
  readonly #bench: Bench;
  /** the agents' kubeconfig of the upstream: its client certificate and a token besides */
  readonly memberKubeconfig: string;
  /** the agent of the first cluster, and the client's endpoint to it */
  agent!: TowerProcess;
  endpoint!: Endpoint;

  private constructor(bench: Bench) {
    this.#bench = bench;
    this.stack = bench.adopt(new Stack());
    this.memberKubeconfig = writeMemberKubeconfig(bench, join(this.stack.dataDir, 'member.kubeconfig'));
  }

  /**
   * A proxy, and one agent of cluster `name` connected to it (both measured: with the bench's env and
   * the agent with --agent-args, besides `agentArgs`).
   */
  static async start(bench: Bench, name: string, agentArgs: string[] = []): Promise<Tunnel> {
    const t = new Tunnel(bench);
    await t.startProxy();
    const { token } = await t.stack.token(name);
    t.agent = t.startAgent(name, token, [...agentArgs, ...bench.flags.agentArgs], bench.towerEnv);
    await t.agent.waitFor(/connected to proxy/);
    t.endpoint = await t.gateway(name);
    return t;
  }

  get proxy(): TowerProcess {
    return this.stack.proxy!;
  }
  get agentPort(): number {
    return this.stack.agentPort;
  }
  get gatewayPort(): number {
    return this.stack.gatewayPort;
  }

  /**
   * Starts the proxy (again, on the same ports and data dir) with the measured env. The stack's env also
   * serves `tower token` and `tower kubeconfig`, which must not write CPU profiles: it holds the measured
   * env only while the proxy starts.
   */
  async startProxy(): Promise<TowerProcess> {
    const env = this.#bench.towerEnv;
    Object.assign(this.stack.env, env);
    try {
      return await this.stack.startProxy();
    } finally {
      for (const k of Object.keys(env)) delete this.stack.env[k];
    }
  }

  /** Stops the proxy and starts it again (after `gone()` holds, if given). */
  async restartProxy(gone?: () => boolean): Promise<void> {
    await this.proxy.stop('SIGTERM');
    const s = Date.now();
    while (gone && !gone() && Date.now() - s < GONE_LIMIT_MS) await new Promise((r) => setTimeout(r, 20));
    await this.startProxy();
  }

  /** An agent of cluster `name`, started now (not waited on), verifying the proxy by its fingerprint. */
  startAgent(name: string, token: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}): TowerProcess {
    const args = ['agent', '--name', name, '--token', token, '--proxy-server', this.stack.proxyUrl];
    args.push('--proxy-fingerprint', this.stack.fingerprint, '--kubeconfig', this.memberKubeconfig, ...extra);
    const p = new TowerProcess(`agent ${name}`, args, env);
    this.stack.processes.push(p);
    return p;
  }

  /** A client's endpoint to cluster `name` through the gateway, from `tower kubeconfig NAME`. */
  async gateway(name: string): Promise<Endpoint> {
    const kc = parse(readFileSync(await this.stack.kubeconfig(name), 'utf8')) as {
      clusters: { cluster: { 'certificate-authority-data': string } }[];
      users: { user: { 'client-certificate-data': string; 'client-key-data': string } }[];
    };
    const file = (suffix: string, base64: string) => {
      const path = join(this.stack.dataDir, `${name}-${suffix}`);
      writeFileSync(path, Buffer.from(base64, 'base64'), { mode: 0o600 });
      return path;
    };
    return {
      host: '127.0.0.1',
      port: this.gatewayPort,
      prefix: `/clusters/${name}`,
      ca: file('gateway-ca.crt', kc.clusters[0]!.cluster['certificate-authority-data']),
      cert: file('client.crt', kc.users[0]!.user['client-certificate-data']),
      key: file('client.key', kc.users[0]!.user['client-key-data']),
    };
  }
}

/** The member kubeconfig: the bench's upstream, its client certificate and a token besides. */
function writeMemberKubeconfig(bench: Bench, path: string): string {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const { caPem, client } = bench.pki;
  writeFileSync(
    path,
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      'current-context': 'c',
      clusters: [
        {
          name: 'm',
          cluster: { server: `https://127.0.0.1:${bench.upstreamPort}`, 'certificate-authority-data': b64(caPem) },
        },
      ],
      users: [
        {
          name: 'u',
          user: {
            'client-certificate-data': b64(client.cert),
            'client-key-data': b64(client.key),
            token: SERVICE_ACCOUNT_TOKEN,
          },
        },
      ],
      contexts: [{ name: 'c', context: { cluster: 'm', user: 'u' } }],
    }),
    { mode: 0o600 },
  );
  return path;
}
