import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { kubectl, Stack, writeTokenKubeconfig } from './support/stack.ts';
import { tower, TOWER, TowerProcess, waitUntil } from './support/tower.ts';

let member: MemberCluster;
let stack: Stack;

before(async () => {
  member = await startMemberCluster();
  stack = new Stack();
  await stack.startProxy();
});

after(async () => {
  await stack?.close();
  await member?.stop();
});

/** The README's Quick start, with the agent authenticating to the member as `how`. */
async function quickStart(name: string, memberKubeconfig: string) {
  const { token, join: joinCommand } = await stack.token(name);
  assert.equal(
    joinCommand,
    `${TOWER} agent --name ${name} --token ${token} --proxy-server http://127.0.0.1:${stack.agentPort} ` +
      `--proxy-fingerprint ${stack.fingerprint} --kubeconfig <member kubeconfig>`,
  );
  // run exactly the printed command, the member's kubeconfig in its placeholder
  const args = joinCommand.replace('<member kubeconfig>', memberKubeconfig).split(' ');
  const agent = new TowerProcess(`agent ${name}`, args.slice(1), {});
  stack.processes.push(agent);
  await agent.waitFor(/connected to proxy/);
  const kc = await stack.kubeconfig(name);
  return { agent, kc };
}

for (const auth of ['client certificate', 'bearer token'] as const) {
  describe(`quick start: kubectl through the tunnel, agent using a ${auth}`, () => {
    const name = auth === 'client certificate' ? 'alpha' : 'beta';
    let kc: string;

    before(async () => {
      const memberKc =
        auth === 'client certificate'
          ? member.kubeconfig
          : writeTokenKubeconfig(
              join(stack.dataDir, 'member-token.kubeconfig'),
              member.server,
              member.caPem,
              member.token,
            );
      ({ kc } = await quickStart(name, memberKc));
      // the agent makes the TLS to its apiserver and adds its token (negotiated): no credential reaches the proxy
      await stack.proxy!.waitFor(
        new RegExp(`agent connected cluster=${name} .*auth="kept by the agent" upstreamTls=agent`),
      );
    });

    test('the binary runs the SSH ciphers on the embedded native binding', () => {
      assert.match(stack.proxy!.output, /proxy serving .* crypto=native/);
    });

    test('kubectl get namespaces is answered by the member apiserver', async () => {
      const r = await kubectl(kc, ['get', 'namespaces', '-o', 'name']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /namespace\/kube-system/);
      assert.match(r.stdout, /namespace\/default/);
    });

    test('kubectl apply of a ConfigMap lands in the member cluster', async () => {
      const cm =
        `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: via-${name}\n` +
        `  namespace: default\ndata:\n  hello: ${name}\n`;
      const r = await kubectl(kc, ['apply', '-f', '-'], cm);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`configmap/via-${name} created`));
      // read it back directly from the member, not through the tunnel
      const direct = await kubectl(member.kubeconfig, [
        'get',
        'configmap',
        `via-${name}`,
        '-o',
        'jsonpath={.data.hello}',
      ]);
      assert.equal(direct.stdout, name);
    });

    test('kubectl get --raw /version reaches the member (the certificate names the cluster)', async () => {
      const r = await kubectl(kc, ['get', '--raw', '/version']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(JSON.parse(r.stdout).gitVersion, 'v1.20.2');
    });

    test('a watch receives an event created after it started', async () => {
      const cmName = `watched-${name}`;
      const watch = spawn(
        'kubectl',
        ['--kubeconfig', kc, 'get', 'configmaps', '-n', 'default', '--watch', '-o', 'name'],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      watch.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
      });
      try {
        // the initial list arrives first, so the watch is established
        await waitUntil('the watch to list existing ConfigMaps', () => out.includes(`configmap/via-${name}`));
        const created = await kubectl(member.kubeconfig, [
          'create',
          'configmap',
          cmName,
          '-n',
          'default',
          '--from-literal=k=v',
        ]);
        assert.equal(created.code, 0, created.stderr);
        // the ConfigMap did not exist when the watch began: only a watch event can bring it
        await waitUntil(
          () => `the watch to report ${cmName} (got: ${JSON.stringify(out)})`,
          () => out.includes(`configmap/${cmName}`),
        );
      } finally {
        watch.kill('SIGKILL');
      }
    });
  });
}

test('tower kubeconfig for an unknown cluster fails with the fix', async () => {
  const r = await tower(['kubeconfig', 'nosuch'], stack.env);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /cluster "nosuch" not found .* \(create it with: tower token nosuch\)/);
});
