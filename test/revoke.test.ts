// Access that can be revoked and that expires: `tower revoke` by user, serial and time, in the file store and
// in Kubernetes mode, on every replica, across restarts; what a revoked certificate still reaches of the member
// (nothing); `tower kubeconfig --ttl`, and who a kubeconfig acts as, said rather than defaulted silently.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parse } from 'yaml';
import { CertificateAuthority } from '../src/pki/ca.ts';
import { renderKubeconfig } from '../src/pki/kubeconfig.ts';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { fastReplicaFlags, KubeHost, kubeconfigOf } from './support/kube.ts';
import { kubectl, Stack } from './support/stack.ts';
import { run, tower, waitUntil } from './support/tower.ts';
import { TestUpstream } from './support/upstream.ts';

/** the client certificate a kubeconfig holds */
function certificateOf(path: string): X509Certificate {
  const doc = parse(readFileSync(path, 'utf8')) as { users: { user: { 'client-certificate-data': string } }[] };
  return new X509Certificate(Buffer.from(doc.users[0]!.user['client-certificate-data'], 'base64'));
}

/** the serial the kubeconfig's first lines name */
function serialOf(path: string): string {
  const m = /^# certificate serial ([0-9A-F]+), expires (\S+)$/m.exec(readFileSync(path, 'utf8'));
  assert.ok(m, 'the kubeconfig says its serial and expiry');
  return m[1]!;
}

/** group viewers may read namespaces in the member, and nothing else */
async function viewers(member: MemberCluster): Promise<void> {
  for (const args of [
    ['create', 'clusterrole', 'viewer', '--verb=get,list,watch', '--resource=namespaces'],
    ['create', 'clusterrolebinding', 'viewers', '--clusterrole=viewer', '--group=viewers'],
  ]) {
    const r = await kubectl(member.kubeconfig, args);
    assert.equal(r.code, 0, r.stderr);
  }
}

/**
 * the refusal's text: kubectl prints a Status message for a request of its own, while its discovery (on a cold
 * cache) says only "You must be logged in to the server" for any 401
 */
const refusedAsRevoked = async (kc: string, what: RegExp) => {
  const r = await kubectl(kc, ['get', '--raw', '/api/v1/namespaces']);
  return r.code !== 0 && what.test(r.stderr) ? r.stderr : undefined;
};

describe('file store: a proxy and a real kube-apiserver', () => {
  let member: MemberCluster;
  let stack: Stack;
  let upstream: TestUpstream;

  before(async () => {
    member = await startMemberCluster();
    stack = new Stack();
    await stack.startProxy();
    const { token } = await stack.token('alpha');
    await stack.startAgent('alpha', token, member.kubeconfig).waitFor(/connected to proxy/);
    // a member that records every request reaching it: a revoked certificate must send it nothing
    upstream = await TestUpstream.start();
    const echo = await stack.token('echo');
    await stack
      .startAgent('echo', echo.token, upstream.writeKubeconfig(join(stack.dataDir, 'echo.kubeconfig'), 'token'))
      .waitFor(/connected to proxy/);
    await viewers(member);
  });

  after(async () => {
    await stack?.close();
    await upstream?.close();
    await member?.stop();
  });

  test(
    'tower kubeconfig says whom it acts as, its serial and expiry; ' + '--ttl sets its life, 24h by default',
    async () => {
      const admin = await tower(['kubeconfig', 'alpha'], stack.env);
      assert.equal(admin.code, 0, admin.stderr);
      // the default is still admin (the Quick start), but never silently
      assert.match(admin.stderr, /warning: this kubeconfig grants system:masters, cluster-admin of "alpha"/);
      assert.match(
        admin.stdout,
        /^# tower kubeconfig for cluster "alpha": acts as user "tower-admin" in groups system:masters$/m,
      );
      const path = join(stack.dataDir, 'admin.kubeconfig');
      writeFileSync(path, admin.stdout);
      const cert = certificateOf(path);
      const lifetime = Date.parse(cert.validTo) - Date.now();
      assert.ok(lifetime > 23 * 3600_000 && lifetime <= 24 * 3600_000, `a day by default, not a year: ${cert.validTo}`);
      assert.equal(serialOf(path), cert.serialNumber.replace(/^0+/, ''));
      assert.equal((await kubectl(path, ['get', 'namespaces'])).code, 0);

      const jane = await tower(
        ['kubeconfig', 'alpha', '--user', 'jane', '--group', 'viewers', '--ttl', '90m'],
        stack.env,
      );
      assert.equal(jane.code, 0, jane.stderr);
      assert.doesNotMatch(jane.stderr, /warning/, 'asked for jane: nothing to warn of');
      const janePath = join(stack.dataDir, 'jane-ttl.kubeconfig');
      writeFileSync(janePath, jane.stdout);
      const left = Date.parse(certificateOf(janePath).validTo) - Date.now();
      assert.ok(left > 85 * 60_000 && left <= 90 * 60_000, `--ttl 90m: ${certificateOf(janePath).validTo}`);
      assert.match(jane.stderr, new RegExp(`tower revoke --serial ${serialOf(janePath)}`));

      const bad = await tower(['kubeconfig', 'alpha', '--ttl', '10y'], stack.env);
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /^tower kubeconfig: invalid --ttl value "10y"/);
    },
  );

  test(
    '--user: refused (401, naming the revocation) within seconds, its open watch closed; ' +
      'others and later kubeconfigs work',
    async () => {
      const jane = await stack.kubeconfig('alpha', ['--user', 'jane', '--group', 'viewers']);
      const bob = await stack.kubeconfig('alpha', ['--user', 'bob', '--group', 'viewers']);
      const echoJane = await stack.kubeconfig('echo', ['--user', 'jane']);
      assert.equal((await kubectl(jane, ['get', 'namespaces'])).code, 0);
      assert.equal((await kubectl(echoJane, ['get', '--raw', '/api'])).code, 0);
      // a watch held open on a kept connection
      const watch = spawn('kubectl', ['--kubeconfig', jane, 'get', 'namespaces', '--watch', '--request-timeout=0'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      // what it printed, read as it comes: a waiter that attached late would miss it for ever
      let listed = '';
      watch.stdout.on('data', (d: Buffer) => (listed += d.toString()));
      let watchErr = '';
      watch.stderr.on('data', (d: Buffer) => (watchErr += d.toString()));
      const watchEnded = new Promise<number | null>((resolve) => watch.on('exit', resolve));
      try {
        await waitUntil('the watch to list', () => listed.length > 0);

        assert.equal(watch.exitCode, null, 'the watch runs until the revocation');
        const r = await tower(['revoke', '--user', 'jane'], stack.env);
        assert.equal(r.code, 0, r.stderr);
        assert.match(
          r.stdout,
          /^revoked certificates of user "jane" issued before \S+; every proxy refuses it within 2s/,
        );
        const seenBefore = upstream.requests.length;

        const stderr = await waitUntil('jane to be refused', () => refusedAsRevoked(jane, /revoked/));
        assert.match(stderr, /this client certificate is revoked \(certificates of user "jane" issued before/);
        assert.match((await kubectl(jane, ['get', 'namespaces'])).stderr, /You must be logged in to the server/);
        // the open watch ends: kubectl exits, or has been cut off and cannot resume
        const ended = await Promise.race([watchEnded, new Promise((r) => setTimeout(() => r('running'), 15_000))]);
        assert.notEqual(ended, 'running', `the revoked watch was closed (${watchErr})`);

        // nothing of jane's reaches a member any more
        const echoed = await kubectl(echoJane, ['get', '--raw', '/api']);
        assert.notEqual(echoed.code, 0);
        assert.equal(
          upstream.requests.slice(seenBefore).filter((q) => q.headers['impersonate-user'] === 'jane').length,
          0,
          'no request of the revoked certificate reached the member',
        );
        // bob, and a kubeconfig for jane issued after the revocation, are good
        assert.equal((await kubectl(bob, ['get', 'namespaces'])).code, 0);
        const janeAgain = await stack.kubeconfig('alpha', ['--user', 'jane', '--group', 'viewers']);
        const again = await kubectl(janeAgain, ['get', 'namespaces']);
        assert.equal(again.code, 0, again.stderr);
      } finally {
        watch.kill();
      }
    },
  );

  test('--serial cuts off one kubeconfig of a user, not the others; the list survives a restart', async () => {
    const one = await stack.kubeconfig('alpha', ['--user', 'carol', '--group', 'viewers']);
    const two = await stack.kubeconfig('alpha', ['--user', 'carol', '--group', 'viewers']);
    const r = await tower(['revoke', '--serial', serialOf(one)], stack.env);
    assert.equal(r.code, 0, r.stderr);
    await waitUntil('the one to be refused', () => refusedAsRevoked(one, /revoked \(certificate [0-9A-F]+/));
    assert.equal((await kubectl(two, ['get', 'namespaces'])).code, 0, 'the other kubeconfig of carol works');

    await stack.proxy!.stop('SIGTERM');
    await stack.startProxy();
    await waitUntil(
      'the agent to come back',
      async () => (await kubectl(two, ['get', 'namespaces'])).code === 0,
      30_000,
    );
    assert.ok(await refusedAsRevoked(one, /revoked/), 'still revoked after a restart');

    const list = await tower(['revoke', '--list'], stack.env);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, new RegExp(`certificate ${serialOf(one)}$`, 'm'));
    assert.match(list.stdout, /certificates of user "jane" issued before/);
  });

  /** a kubeconfig for alpha with a certificate the test issues itself with tower's CA */
  async function issued(user: string, groups: string[], days: number, uris: string[] = []): Promise<string> {
    const ca = await CertificateAuthority.load(
      {
        cert: readFileSync(join(stack.dataDir, 'ca.crt'), 'utf8'),
        key: readFileSync(join(stack.dataDir, 'ca.key'), 'utf8'),
      },
      'test',
    );
    const leaf = await ca.issueClient(user, groups, days, 'alpha', uris);
    const path = join(stack.dataDir, `issued-${Date.now()}.kubeconfig`);
    writeFileSync(
      path,
      renderKubeconfig({
        cluster: 'alpha',
        server: `https://127.0.0.1:${stack.gatewayPort}/clusters/alpha`,
        caPem: ca.certPem,
        user,
        certPem: leaf.cert,
        keyPem: leaf.key,
      }),
    );
    return path;
  }

  test(
    'a certificate that expires while its watch is open: ' + 'the watch is closed, the next request refused',
    async () => {
      const kc = await issued('frank', ['viewers'], 6 / 86_400);
      const watch = spawn('kubectl', ['--kubeconfig', kc, 'get', 'namespaces', '--watch', '--request-timeout=0'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      // what it printed, read as it comes: a waiter that attached late would miss it for ever
      let listed = '';
      watch.stdout.on('data', (d: Buffer) => (listed += d.toString()));
      const ended = new Promise<number | null>((resolve) => watch.on('exit', resolve));
      try {
        await waitUntil('the watch to list', () => listed.length > 0);
        const notAfter = Date.parse(certificateOf(kc).validTo);
        assert.ok(notAfter > Date.now(), 'it is good while the watch starts');
        const outcome = await Promise.race([ended, new Promise((r) => setTimeout(() => r('running'), 20_000))]);
        assert.notEqual(outcome, 'running', 'the watch of the expired certificate was closed');
        assert.ok(Date.now() > notAfter, 'not before it expired');
        const r = await kubectl(kc, ['get', '--raw', '/api/v1/namespaces']);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /expired/);
      } finally {
        watch.kill();
      }
    },
  );

  test(
    'a user name with spaces around it (it would act as the trimmed name) is refused, ' + 'at issue and at the gateway',
    async () => {
      const bad = await tower(['kubeconfig', 'alpha', '--user', ' jane'], stack.env);
      assert.equal(bad.code, 1);
      assert.match(
        bad.stderr,
        /^tower kubeconfig: invalid --user value " jane" from flag --user: must not be empty nor/,
      );
      const kc = await issued('jane ', ['viewers'], 1);
      const r = await kubectl(kc, ['get', '--raw', '/api/v1/namespaces']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /Forbidden.*subject holds a name with spaces around it/);
    },
  );

  test("a certificate naming a replica, where there are none, is a user's like any other: revocable", async () => {
    const kc = await issued('mallory', [], 1, ['urn:tower:peer:x']);
    assert.equal((await kubectl(kc, ['get', '--raw', '/api/v1/namespaces'])).code, 1, 'mallory has no RBAC');
    const serial = certificateOf(kc).serialNumber;
    assert.equal((await tower(['revoke', '--serial', serial], stack.env)).code, 0);
    await waitUntil('mallory to be refused', () => refusedAsRevoked(kc, /this client certificate is revoked/));
  });

  test(
    'a FIFO, or a link to nothing, where the list should be: ' + 'every certificate refused; the proxy serves on',
    async () => {
      const gina = await stack.kubeconfig('alpha', ['--user', 'gina', '--group', 'viewers']);
      const file = join(stack.dataDir, 'revocations.yaml');
      const good = readFileSync(file, 'utf8');
      for (const [make, what] of [
        [['mkfifo', file], /is not a regular file/],
        [['ln', '-s', join(stack.dataDir, 'nothing-here'), file], /cannot be read: a link to nothing/],
      ] as const) {
        rmSync(file);
        assert.equal((await run(make[0], make.slice(1))).code, 0);
        const stderr = await waitUntil('every certificate to be refused', () => refusedAsRevoked(gina, what));
        assert.match(stderr, /tower cannot enforce its revocation list/);
        rmSync(file);
        writeFileSync(file, good);
        await waitUntil('gina to be served again', async () => (await kubectl(gina, ['get', 'namespaces'])).code === 0);
      }
    },
  );

  test(
    'a malformed list refuses every client certificate, naming the file, until it is fixed; ' + 'the proxy serves on',
    async () => {
      const dave = await stack.kubeconfig('alpha', ['--user', 'dave', '--group', 'viewers']);
      const file = join(stack.dataDir, 'revocations.yaml');
      const good = readFileSync(file, 'utf8');
      // a typo: "users" would otherwise revoke nothing, silently
      writeFileSync(file, 'revocations:\n  - users: dave\n    revokedAt: 2026-01-01T00:00:00Z\n');
      const stderr = await waitUntil('every certificate to be refused', () =>
        refusedAsRevoked(dave, /revocation list/),
      );
      assert.match(
        stderr,
        /tower cannot enforce its revocation list: \S*revocations.yaml entry 1 has an unknown key "users"/,
      );
      assert.match(
        stack.proxy!.output,
        /revocation list unusable: every client certificate is refused until it is fixed/,
      );
      writeFileSync(file, good);
      await waitUntil('dave to be served again', async () => (await kubectl(dave, ['get', 'namespaces'])).code === 0);
    },
  );

  test('--all revokes every kubeconfig issued so far; bad invocations are one-line errors', async () => {
    const before = await stack.kubeconfig('alpha', ['--user', 'erin', '--group', 'viewers']);
    const r = await tower(['revoke', '--all'], stack.env);
    assert.equal(r.code, 0, r.stderr);
    await waitUntil('every earlier kubeconfig to be refused', () =>
      refusedAsRevoked(before, /every certificate issued before/),
    );
    const later = await stack.kubeconfig('alpha', ['--user', 'erin', '--group', 'viewers']);
    assert.equal((await kubectl(later, ['get', 'namespaces'])).code, 0);

    for (const [args, message] of [
      [[], /give exactly one of --user NAME, --serial HEX, --issued-before TIME or --all/],
      [['--user', 'x', '--all'], /give exactly one of/],
      [['--serial', 'xyz'], /invalid --serial value "xyz" from flag --serial: want the hexadecimal serial number/],
      [['--issued-before', 'yesterday'], /want an RFC 3339 time with its offset, such as 2026-01-31T12:00:00Z/],
      [['--issued-before', '1'], /want an RFC 3339 time/],
      [['--issued-before', '2026-02-30T00:00:00Z'], /want an RFC 3339 time/],
      [['--issued-before', '2026-01-01T00:00:00'], /want an RFC 3339 time with its offset/],
      [['--issued-before', '2999-01-01T00:00:00Z'], /is in the future/],
      [['--list', '--all'], /--list changes nothing/],
    ] as const) {
      const bad = await tower(['revoke', ...args], stack.env);
      assert.equal(bad.code, 1, `${args.join(' ')}: ${bad.stdout}`);
      assert.match(bad.stderr, message);
      assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
    }
  });
});

describe('Kubernetes mode: two replicas, the list in a ConfigMap', () => {
  let host: KubeHost;
  let member: MemberCluster;

  before(async () => {
    [host, member] = await Promise.all([KubeHost.start(), startMemberCluster()]);
    await viewers(member);
  });

  after(async () => {
    await Promise.all([host?.close(), member?.stop()]);
  });

  test(
    '--user and --group are honoured (a gateway kubeconfig); ' +
      'revoking it holds on every replica and across restarts',
    async () => {
      // replicas as pods are: an address and an id each, one writing the Clusters
      const flags = (n: number) => [...fastReplicaFlags('4s'), '--host', `127.0.0.${n}`, '--server-id', `replica${n}`];
      const a = await host.startProxy(flags(1)); // where host.startAgent dials
      const b = await host.startProxy(flags(3));
      const gatewayOf = (p: { output: string }) => /gateway=(127\.0\.0\.\d+:\d+)/.exec(p.output)![1]!;
      await host.applyCluster('alpha');
      const c = await host.waitCluster('alpha', 'a token', (x) => Boolean(x.spec?.connection?.token));
      await host.startAgent('alpha', c.spec!.connection!.token!, a.agentPort, member).waitFor(/connected to proxy/);

      // the Cluster's own kubeconfig is printed with a note of what it grants
      const own = await host.tower(['kubeconfig', 'alpha']);
      assert.equal(own.code, 0, own.stderr);
      assert.match(own.stderr, /acts as tower-admin in group system:masters/);

      // jane's, through either replica: the member's RBAC decides for jane, not system:masters
      /** `tower kubeconfig alpha --user jane --group viewers` through replica `p`'s gateway, to a file */
      const janeVia = async (p: { output: string }, file: string) => {
        const r = await host.tower([
          'kubeconfig',
          'alpha',
          '--user',
          'jane',
          '--group',
          'viewers',
          '--server',
          `https://${gatewayOf(p)}/clusters/alpha`,
        ]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(/^CN=(.*)$/m.exec(new X509Certificate(certPem(r.stdout)).subject)?.[1], 'jane');
        const path = join(host.dir, file);
        writeFileSync(path, r.stdout);
        return path;
      };
      const kubeconfigs = [await janeVia(a, 'jane-a.kubeconfig'), await janeVia(b, 'jane-b.kubeconfig')];
      for (const kc of kubeconfigs) {
        const get = await kubectl(kc, ['get', 'namespaces']);
        assert.equal(get.code, 0, get.stderr);
        const create = await kubectl(kc, ['create', 'namespace', 'janes']);
        assert.notEqual(create.code, 0, 'jane is not an admin');
        assert.match(create.stderr, /User "jane" cannot create resource "namespaces"/);
      }

      const r = await host.tower(['revoke', '--user', 'jane']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /in ConfigMap kubesphere-system\/tower-revocations\)$/m);
      for (const kc of kubeconfigs) await waitUntil(`jane refused at ${kc}`, () => refusedAsRevoked(kc, /revoked/));

      // a restarted replica reads the list before it serves
      await b.stop('SIGTERM');
      const b2 = await host.startProxy(flags(3));
      const viaB2 = join(host.dir, 'jane-b2.kubeconfig');
      writeFileSync(viaB2, readFileSync(kubeconfigs[1]!, 'utf8').replace(gatewayOf(b), gatewayOf(b2)));
      assert.ok(
        await refusedAsRevoked(viaB2, /this client certificate is revoked/),
        'refused by the restarted replica',
      );
      const plain = await kubectl(viaB2, ['get', 'namespaces']);
      assert.notEqual(plain.code, 0);
      assert.match(plain.stderr, /You must be logged in to the server/, 'a 401, as kubectl reads it');
      const fresh = await janeVia(b2, 'jane-fresh.kubeconfig');
      assert.equal((await kubectl(fresh, ['get', 'namespaces'])).code, 0, 'a kubeconfig issued later works');

      // --all revokes the Cluster's own kubeconfig too (KubeSphere's): the proxy that writes issues it anew
      const serialOfCluster = async () =>
        new X509Certificate(certPem(kubeconfigOf((await host.get('alpha'))!))).serialNumber;
      const old = await serialOfCluster();
      const all = await host.tower(['revoke', '--all']);
      assert.equal(all.code, 0, all.stderr);
      await waitUntil('fresh to be refused', () => refusedAsRevoked(fresh, /every certificate issued before/));
      // the writing replica issues it anew once it reads the new list: no change of the Cluster, no resync
      await waitUntil('a new kubeconfig in the Cluster', async () => (await serialOfCluster()) !== old, 30_000);
      const renewed = join(host.dir, 'cluster-own.kubeconfig');
      writeFileSync(
        renewed,
        kubeconfigOf((await host.get('alpha'))!).replace(
          /server: \S+/,
          `server: https://${gatewayOf(b2)}/clusters/alpha`,
        ),
      );
      const renewedGet = await kubectl(renewed, ['get', '--raw', '/api/v1/namespaces']);
      assert.equal(renewedGet.code, 0, `the Cluster's new kubeconfig is good: ${renewedGet.stderr}`);
    },
  );
});

function certPem(kubeconfig: string): string {
  const doc = parse(kubeconfig) as { users: { user: { 'client-certificate-data': string } }[] };
  return Buffer.from(doc.users[0]!.user['client-certificate-data'], 'base64').toString('utf8');
}
