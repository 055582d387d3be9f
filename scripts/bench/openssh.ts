// The openssh path, the peer tower is compared with: ssh -L through Debian's OpenSSH on loopback
// (aes128-gcm@openssh.com) to the bench's upstream; sshd and its keys live in the bench's work dir.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from '../../test/support/tower.ts';
import type { Bench } from './context.ts';
import { ensureTools, sleep, waitPort } from './proc.ts';

const CIPHER = 'aes128-gcm@openssh.com';
/** polls for sshd's per-connection process */
const SESSION_POLLS = 100;
const SESSION_POLL_MS = 50;

export interface OpenSsh {
  /** ssh -L's local port, sshd's port */
  port: number;
  sshdPort: number;
  /** the two processes that relay the bytes: ssh and sshd's per-connection process */
  pids: [number, number];
}

export async function startOpenSsh(bench: Bench, upstreamPort: number): Promise<OpenSsh> {
  // OpenSSH (the peer path) and curl (the bulk client)
  ensureTools(
    [
      ['ssh', 'openssh-client'],
      ['sshd', 'openssh-server'],
      ['curl', 'curl'],
    ],
    (m) => bench.log(m),
  );
  const d = join(bench.work, 'ssh');
  mkdirSync(d, { mode: 0o700 });
  for (const k of ['host_key', 'user_key'])
    spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(d, k)]);
  writeFileSync(join(d, 'authorized_keys'), readFileSync(join(d, 'user_key.pub')));
  chmodSync(join(d, 'authorized_keys'), 0o600);
  mkdirSync('/run/sshd', { recursive: true });
  const sshdPort = await freePort();
  const config = [
    `ListenAddress 127.0.0.1:${sshdPort}`,
    `HostKey ${join(d, 'host_key')}`,
    `AuthorizedKeysFile ${join(d, 'authorized_keys')}`,
    'PermitRootLogin prohibit-password',
    'PasswordAuthentication no',
    'StrictModes no',
    'UsePAM no',
    'AllowTcpForwarding yes',
    `Ciphers ${CIPHER}`,
    `PidFile ${join(d, 'sshd.pid')}`,
  ];
  writeFileSync(join(d, 'sshd_config'), config.join('\n') + '\n');
  const sshd = bench.spawn('sshd', '/usr/sbin/sshd', ['-D', '-e', '-f', join(d, 'sshd_config')]);
  await waitPort(sshdPort);
  const port = await freePort();
  const user = process.env.USER ?? 'root';
  const options = [
    'StrictHostKeyChecking=no',
    'UserKnownHostsFile=/dev/null',
    'BatchMode=yes',
    'ExitOnForwardFailure=yes',
  ];
  const ssh = bench.spawn('ssh', 'ssh', [
    ...['-N', '-T', '-i', join(d, 'user_key'), '-p', String(sshdPort), '-c', CIPHER],
    ...options.flatMap((o) => ['-o', o]),
    ...['-L', `${port}:127.0.0.1:${upstreamPort}`, `${user}@127.0.0.1`],
  ]);
  await waitPort(port);
  // the per-connection sshd process relays the bytes
  let session = 0;
  for (let i = 0; i < SESSION_POLLS && !session; i++) {
    const r = spawnSync('pgrep', ['-P', String(sshd.pid)], { encoding: 'utf8' });
    session = Number(r.stdout.trim().split('\n').pop() || 0);
    if (!session) await sleep(SESSION_POLL_MS);
  }
  // with privilege separation the relay is a grandchild
  const grand = spawnSync('pgrep', ['-P', String(session)], { encoding: 'utf8' })
    .stdout.trim()
    .split('\n')
    .filter(Boolean)
    .map(Number);
  return { port, sshdPort, pids: [ssh.pid, grand[0] ?? session] };
}
