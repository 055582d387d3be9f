import { randomBytes } from 'node:crypto';
import { Command, Option } from 'clipanion';
import { TOKEN_OPTIONS } from '../config/options.ts';
import { StoreError } from '../errors.ts';
import { loadHostKey } from '../pki/keys.ts';
import { normalizeProxyServer } from '../agent/agent.ts';
import { assertClusterName } from '../store/names.ts';
import { hostKeyFingerprint } from '../tunnel/ssh.ts';
import { TowerCommand } from './base.ts';

export class TokenCommand extends TowerCommand {
  static override paths = [['token']];
  static override usage = Command.Usage({
    description: 'Register a cluster (if new) and print its token and join command',
    details: `
      Creates the cluster in the store when it is missing and prints its token and the exact
      \`tower agent\` command to run on the member side. --rotate issues a new token; a running proxy
      drops the sessions that used the old one within a second.
    `,
    examples: [['Register alpha', '$0 token alpha'], ['Rotate its token', '$0 token alpha --rotate']],
  });
  readonly command = 'token';

  name = Option.String({ name: 'name' });
  rotate = Option.Boolean('--rotate', { description: 'Issue a new token; sessions with the old one are closed' });
  proxyServer = Option.String('--proxy-server', { description: 'Agent endpoint to print in the join command (default: what the proxy recorded)' });
  dataDir = Option.String('--data-dir', { description: 'Directory of the embedded store (env TOWER_HOME; default ~/.tower)' });

  async run(): Promise<number> {
    const o = this.load(TOKEN_OPTIONS, { rotate: this.rotate, proxyServer: this.proxyServer, dataDir: this.dataDir });
    const name = assertClusterName(this.name);
    const store = this.openStore(o.dataDir);
    try {
      let cluster = await store.get(name);
      let note: string;
      if (!cluster) {
        try {
          cluster = await store.create(name, newToken());
          note = `registered cluster "${name}" in ${store.location}`;
        } catch (err) {
          // another `tower token` created it meanwhile: print that one
          if (!(err instanceof StoreError && err.code === 'EEXIST')) throw err;
          cluster = (await store.get(name))!;
          note = `cluster "${name}" is already registered in ${store.location}`;
        }
      } else if (o.rotate) {
        cluster = await this.#rotate(store, name);
        note = `rotated the token of cluster "${name}"; agents with the old one are disconnected`;
      } else {
        note = `cluster "${name}" is already registered in ${store.location}`;
      }
      const record = await store.readProxyRecord();
      const server = normalizeProxyServer(o.proxyServer ?? record?.agentUrl ?? 'http://127.0.0.1:8080').replace(/^ws/, 'http');
      const fingerprint = hostKeyFingerprint(await loadHostKey(store));
      process.stderr.write(`${note}\n`);
      process.stdout.write(`token: ${cluster.token}\n`);
      process.stdout.write(`join with:\n  tower agent --name ${name} --token ${cluster.token} --proxy-server ${server} --proxy-fingerprint ${fingerprint}\n`);
      return 0;
    } finally {
      store.close();
    }
  }

  async #rotate(store: import('../store/types.ts').ClusterStore, name: string) {
    for (let attempt = 0; ; attempt++) {
      const current = (await store.get(name))!;
      try {
        return await store.update({ ...current, token: newToken() });
      } catch (err) {
        if (!(err instanceof StoreError && err.code === 'ECONFLICT') || attempt >= 5) throw err;
      }
    }
  }
}

function newToken(): string {
  return randomBytes(32).toString('hex');
}
