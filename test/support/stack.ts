import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { freePort, removeDir, run, tempDir, tower, TowerProcess, type RunResult } from './tower.ts';

/** A proxy on its own data dir and loopback ports, with helpers to register clusters and start agents. */
export class Stack {
  readonly dataDir: string;
  readonly env: NodeJS.ProcessEnv;
  agentPort = 0;
  gatewayPort = 0;
  proxy: TowerProcess | undefined;
  readonly processes: TowerProcess[] = [];

  constructor() {
    this.dataDir = tempDir('data');
    this.env = { TOWER_HOME: this.dataDir };
  }

  get proxyUrl(): string {
    return `http://127.0.0.1:${this.agentPort}`;
  }

  /** Starts (or restarts, on the same ports and data dir) the proxy. */
  async startProxy(extra: string[] = []): Promise<TowerProcess> {
    // a port picked free can be taken (by any outgoing connection) before the proxy binds it: freshly
    // picked ports are picked again then; a restart keeps its ports
    const fresh = !this.agentPort || !this.gatewayPort;
    for (let attempt = 1; ; attempt++) {
      if (!this.agentPort) this.agentPort = await freePort();
      if (!this.gatewayPort) this.gatewayPort = await freePort();
      const p = new TowerProcess(
        'proxy',
        [
          'proxy',
          '--host',
          '127.0.0.1',
          '--port',
          String(this.agentPort),
          '--gateway-port',
          String(this.gatewayPort),
          ...extra,
        ],
        this.env,
      );
      this.processes.push(p);
      try {
        await p.waitFor(/proxy serving/);
      } catch (err) {
        if (!fresh || attempt >= 3 || !/is already in use/.test(p.output)) throw err;
        this.agentPort = 0;
        this.gatewayPort = 0;
        continue;
      }
      this.proxy = p;
      return p;
    }
  }

  /** `tower token NAME`: the token and the printed join command. */
  async token(name: string, extra: string[] = []): Promise<{ token: string; join: string; result: RunResult }> {
    const result = await tower(['token', name, ...extra], this.env);
    if (result.code !== 0) throw new Error(`tower token ${name} failed: ${result.stderr}`);
    const token = /^token: ([0-9a-f]{64})$/m.exec(result.stdout)?.[1];
    const join = joinCommand(result.stdout);
    if (!token || !join) throw new Error(`unexpected tower token output:\n${result.stdout}`);
    return { token, join, result };
  }

  /** the proxy's host key fingerprint, as it recorded it in the data dir */
  get fingerprint(): string {
    return (parse(readFileSync(join(this.dataDir, 'proxy.yaml'), 'utf8')) as { hostKeyFingerprint: string })
      .hostKeyFingerprint;
  }

  /** An agent of this proxy, which it verifies by the recorded fingerprint unless `extra` says otherwise. */
  startAgent(name: string, token: string, memberKubeconfig: string, extra: string[] = []): TowerProcess {
    const verify = extra.some((a) => a === '--proxy-fingerprint' || a === '--insecure-skip-proxy-verification')
      ? []
      : ['--proxy-fingerprint', this.fingerprint];
    const p = new TowerProcess(
      `agent ${name}`,
      [
        'agent',
        '--name',
        name,
        '--token',
        token,
        '--proxy-server',
        this.proxyUrl,
        '--kubeconfig',
        memberKubeconfig,
        '--max-retry-interval',
        '2s',
        ...verify,
        ...extra,
      ],
      {},
    );
    this.processes.push(p);
    return p;
  }

  /** Writes `tower kubeconfig NAME` to a file and returns its path. */
  async kubeconfig(name: string, extra: string[] = []): Promise<string> {
    const r = await tower(['kubeconfig', name, ...extra], this.env);
    if (r.code !== 0) throw new Error(`tower kubeconfig ${name} failed: ${r.stderr}`);
    const path = join(this.dataDir, `${name}-${Date.now()}.kubeconfig`);
    writeFileSync(path, r.stdout, { mode: 0o600 });
    return path;
  }

  /** Stops every process this stack started (by PID) and removes its data dir. */
  async close(): Promise<void> {
    await Promise.all(this.processes.map((p) => p.stop('SIGKILL')));
    removeDir(this.dataDir);
  }
}

/**
 * The join command `tower token` printed, its continuation line joined: "<binary> agent … --kubeconfig <member
 * kubeconfig>".
 */
export function joinCommand(stdout: string): string | undefined {
  const m = /^ {2}(\S+ agent .*) \\\n {4}(--kubeconfig <member kubeconfig>)$/m.exec(stdout);
  return m ? `${m[1]} ${m[2]}` : undefined;
}

export function kubectl(kubeconfig: string, args: string[], input?: string): Promise<RunResult> {
  return run('kubectl', ['--kubeconfig', kubeconfig, '--request-timeout=30s', ...args], { input, timeoutMs: 60_000 });
}

/** A kubeconfig for `server` that authenticates with a bearer token (the apiserver's CA pinned). */
export function writeTokenKubeconfig(path: string, server: string, caPem: string, token: string): string {
  writeFileSync(
    path,
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        { name: 'm', cluster: { server, 'certificate-authority-data': Buffer.from(caPem).toString('base64') } },
      ],
      users: [{ name: 'u', user: { token } }],
      contexts: [{ name: 'c', context: { cluster: 'm', user: 'u' } }],
      'current-context': 'c',
    }),
    { mode: 0o600 },
  );
  return path;
}

export { run };
