import { randomBytes } from 'node:crypto';
import { Option } from 'clipanion';
import { TOKEN_OPTIONS } from '../config/options.ts';
import { ConflictError, StoreError } from '../errors.ts';
import { loadHostKey } from '../pki/keys.ts';
import { normalizeProxyServer } from '../agent/agent.ts';
import type { Cluster, ClusterRecords, IssuedByProxy } from '../mode/mode.ts';
import { hostKeyFingerprint } from '../tunnel/ssh.ts';
import { reachOf } from '../config/names.ts';
import { TowerCommand, type CommandDoc } from './base.ts';
import { waitWithProgress } from './progress.ts';

const CONFLICT_RETRIES = 5;

export class TokenCommand extends TowerCommand {
  static override paths = [['token']];
  static override options = TOKEN_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'token NAME',
    summary: 'Register a cluster (if new) and print its token and join command',
    details:
      `Creates the cluster in the store when it is missing and prints its token and the \`tower agent\` ` +
      `command to run on the member side, with the proxy's address and host key fingerprint as the proxy ` +
      `recorded them. An existing cluster's token is printed as it is; --rotate issues a new one, and a ` +
      `running proxy drops the sessions that used the old one within a second.\n` +
      `\n` +
      `Kubernetes mode (--kubeconfig <host>): creates the Cluster resource (type proxy, joining the ` +
      `federation) and waits until the proxy has filled in its token.`,
    examples: [
      ['Register alpha', 'tower token alpha'],
      ['Rotate its token', 'tower token alpha --rotate'],
      ['In a KubeSphere host cluster', 'tower token alpha --kubeconfig host.kubeconfig'],
    ],
  };
  readonly command = 'token';

  name = Option.String({ name: 'NAME', required: false });

  async run(): Promise<number> {
    const o = this.load(TOKEN_OPTIONS);
    const name = this.clusterName(this.name);
    return this.withMode(o, async (mode) => {
      const { cluster, note } = mode.issuedByProxy
        ? await this.#issued(mode.issuedByProxy, mode.clusters, name, o.rotate, o.timeout)
        : await this.#registered(mode.clusters, name, o.rotate);
      const record = await mode.proxyRecord.read();
      const server = normalizeProxyServer(o.proxyServer ?? record?.agentUrl ?? 'http://127.0.0.1:8080').replace(
        /^ws/,
        'http',
      );
      const fingerprint = hostKeyFingerprint(await loadHostKey(mode.keys));
      process.stderr.write(`${note}\n`);
      const reach = reachOf(new URL(server).hostname);
      if (reach === 'loopback')
        process.stderr.write(
          `warning: the join command names the proxy at ${server}, a loopback address: an agent on another ` +
            `machine, or in a pod, cannot reach it. Give --proxy-server the address members reach, or start the ` +
            `proxy with --publish-service-address (README: Expose the proxy)\n`,
        );
      else if (reach === 'cluster')
        process.stderr.write(
          `warning: the join command names the proxy at ${server}, a Service name that only pods of the host ` +
            `cluster resolve: an agent elsewhere cannot reach it. Give --proxy-server the address members reach ` +
            `(README: Expose the proxy)\n`,
        );
      process.stdout.write(`token: ${cluster.token}\n`);
      const bin = invokedAs();
      const args = [
        `--name ${name}`,
        `--token ${cluster.token}`,
        `--proxy-server ${server}`,
        `--proxy-fingerprint ${fingerprint}`,
      ].join(' ');
      process.stdout.write(
        `join with (on a machine that reaches the proxy, with the member's kubeconfig):\n  ${bin} agent ${args} ` +
          `\\\n    --kubeconfig <member kubeconfig>\n`,
      );
      process.stdout.write(
        // --with-namespace: a member without KubeSphere has no kubesphere-system (no uninstall deletes it)
        `or run the agent in the member cluster:\n  ${bin} install agent ${args} --with-namespace | kubectl ` +
          `--kubeconfig <member kubeconfig> apply -f -\n`,
      );
      return 0;
    });
  }

  /** The cluster's record: created when missing, with a token made here. */
  async #registered(
    clusters: ClusterRecords,
    name: string,
    rotate: boolean,
  ): Promise<{ cluster: Cluster; note: string }> {
    const existing = await clusters.get(name);
    if (!existing) {
      try {
        return {
          cluster: await clusters.create(name, newToken()),
          note: `registered cluster "${name}" in ${clusters.location}`,
        };
      } catch (err) {
        // another `tower token` created it meanwhile: print that one
        if (!(err instanceof StoreError && err.code === 'EEXIST')) throw err;
        return {
          cluster: (await clusters.get(name))!,
          note: `cluster "${name}" is already registered in ${clusters.location}`,
        };
      }
    }
    if (existing.problem && !rotate) {
      throw new StoreError(
        'EUNUSABLE',
        `cluster "${name}" is registered, but ${existing.problem}; its agents are refused. ` +
          `Restore the file, or write a new token with: tower token ${name} --rotate`,
      );
    }
    if (!rotate) return { cluster: existing, note: `cluster "${name}" is already registered in ${clusters.location}` };
    return {
      cluster: await rotateToken(clusters, name),
      note: `rotated the token of cluster "${name}"; agents with the old one are disconnected`,
    };
  }

  /** The cluster's request: made when missing, then awaited until the proxy has issued its token. */
  async #issued(
    issuer: IssuedByProxy,
    clusters: ClusterRecords,
    name: string,
    rotate: boolean,
    timeoutMs: number,
  ): Promise<{ cluster: Cluster; note: string }> {
    const requested = await issuer.request(name);
    let note = requested.note;
    if (rotate && requested.cluster) {
      await rotateToken(clusters, name);
      note = `rotated the token of Cluster "${name}"; agents with the old one are disconnected`;
    }
    const cluster = await waitWithProgress(
      `waiting for the proxy to fill in the token of Cluster "${name}"`,
      () => issuer.issued(name),
      timeoutMs,
      `the proxy has not initialized Cluster "${name}": is a tower proxy running against ${issuer.server}? ` +
        '(tower proxy --kubeconfig <host>)',
    );
    return { cluster, note };
  }
}

/** A new token, written with optimistic concurrency (retried when someone else wrote meanwhile). */
async function rotateToken(clusters: ClusterRecords, name: string): Promise<Cluster> {
  for (let attempt = 0; ; attempt++) {
    const current = (await clusters.get(name))!;
    try {
      return await clusters.update({ ...current, token: newToken() });
    } catch (err) {
      if (!(err instanceof ConflictError) || attempt >= CONFLICT_RETRIES) throw err;
    }
  }
}

/** the binary as the user invoked it (dist/tower, /usr/local/bin/tower), so that the join command runs as printed */
function invokedAs(): string {
  const argv0 = process.argv0;
  return !argv0 || /(^|\/)node(\.exe)?$/.test(argv0) ? 'tower' : argv0;
}

function newToken(): string {
  return randomBytes(32).toString('hex');
}
