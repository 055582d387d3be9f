import { setTimeout as sleep } from 'node:timers/promises';
import { REVOKE_OPTIONS } from '../config/options.ts';
import { ConfigError, StoreError } from '../errors.ts';
import { normalizeSerial, rfc3339 } from '../config/names.ts';
import { describeRevocation, type Revocation } from '../pki/revocations.ts';
import { TowerCommand, type CommandDoc } from './base.ts';

export class RevokeCommand extends TowerCommand {
  static override paths = [['revoke']];
  static override options = REVOKE_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'revoke',
    summary: 'Cut off kubeconfigs: by user, by certificate serial, or all issued before a time',
    details:
      'Adds to the revocation list (revocations.yaml in the data dir; in Kubernetes mode ConfigMap ' +
      'kubesphere-system/tower-revocations, written with your host kubeconfig). Every proxy replica reads it ' +
      'within 2 s: it refuses the revoked certificates (401) and closes their open connections, watches and ' +
      'exec sessions included. A list that is stored but malformed refuses every client certificate until it ' +
      'is fixed. --user and --all revoke what was issued until now: a kubeconfig issued afterwards works. The ' +
      "Cluster's own kubeconfig (Kubernetes mode) that --all revokes is issued anew by the proxy within a minute.",
    examples: [
      ['Cut off jane', 'tower revoke --user jane'],
      ['One kubeconfig (its serial is in its first lines)', 'tower revoke --serial 5F3A09C1D2E4B6A8'],
      ['Every kubeconfig issued so far', 'tower revoke --all'],
      ['What is revoked', 'tower revoke --list'],
    ],
  };
  readonly command = 'revoke';

  async run(): Promise<number> {
    const o = this.load(REVOKE_OPTIONS);
    const ways = [o.user !== undefined, o.serial !== undefined, o.issuedBefore !== undefined, o.all].filter(Boolean);
    if (o.list && ways.length > 0) throw new ConfigError('--list changes nothing: give it alone, or drop it to revoke');
    if (!o.list && ways.length !== 1)
      throw new ConfigError(
        `give exactly one of --user NAME, --serial HEX, --issued-before TIME or --all (see: tower revoke --help)`,
      );
    if (o.issuedBefore !== undefined && rfc3339(o.issuedBefore)! > Date.now())
      throw new ConfigError(
        `--issued-before ${o.issuedBefore} is in the future: it would also refuse every kubeconfig issued until ` +
          'then (for everything issued until now: --all)',
      );
    return this.withMode(o, async (mode) => {
      const store = mode.revocations;
      if (o.list) {
        const list = await store.read();
        if (typeof list === 'string') throw new StoreError('EUNUSABLE', `${list}; fix or remove it`);
        if (list.revocations.length === 0) process.stderr.write(`nothing is revoked (${store.location})\n`);
        for (const r of list.revocations) process.stdout.write(`${r.revokedAt}  ${describeRevocation(r)}\n`);
        return 0;
      }
      // issue times are whole seconds: "until now" is until the next whole second, and this command
      // returns after it, so that a kubeconfig issued once it has returned is never caught
      const now = Date.now();
      const until = new Date(Math.ceil((now + 1) / 1000) * 1000);
      const revokedAt = new Date(now).toISOString();
      const entry: Revocation =
        o.serial !== undefined
          ? { serial: normalizeSerial(o.serial), revokedAt }
          : o.user !== undefined
            ? { user: o.user, issuedBefore: until.toISOString(), revokedAt }
            : {
                issuedBefore: o.issuedBefore ? new Date(rfc3339(o.issuedBefore)!).toISOString() : until.toISOString(),
                revokedAt,
              };
      const list = await store.add(entry);
      await sleep(Math.max(0, until.getTime() - Date.now()));
      process.stdout.write(
        `revoked ${describeRevocation(entry)}; every proxy refuses it within 2s ` +
          `(${list.revocations.length} ${list.revocations.length === 1 ? 'entry' : 'entries'} in ${store.location})\n`,
      );
      return 0;
    });
  }
}
