// Kubernetes mode against real kube-apiservers: a host with KubeSphere's Cluster CRD, a member with
// a tower agent. Each test leaves no proxy, agent or Cluster behind.
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { connect as tlsConnect } from 'node:tls';
import { connect } from 'node:net';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import {
  condition,
  CRD_FIXTURE,
  fastReplicaFlags,
  KubeHost,
  kubeconfigOf,
  type ClusterResource,
} from './support/kube.ts';
import { pattern } from './support/pattern.ts';
import { joinCommand, kubectl } from './support/stack.ts';
import { freePort, run, tower, TOWER, TowerProcess, waitUntil } from './support/tower.ts';

let host: KubeHost;
let member: MemberCluster;
/** a stand-in for the member's ks-apiserver: plain HTTP that tells what reached it */
let ks: Server;
let ksAddress = '';

before(async () => {
  [host, member] = await Promise.all([KubeHost.start(), startMemberCluster()]);
  ks = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(
      JSON.stringify({ path: req.url, authorization: req.headers.authorization ?? null, host: req.headers.host }),
    );
  });
  const port = await new Promise<number>((resolve) =>
    ks.listen(0, '127.0.0.1', () => resolve((ks.address() as { port: number }).port)),
  );
  ksAddress = `127.0.0.1:${port}`;
});

after(async () => {
  ks?.close();
  await Promise.all([host?.close(), member?.stop()]);
});

afterEach(async () => {
  await Promise.all(host.processes.splice(0).map((p) => p.stop('SIGKILL')));
  await host.kubectl(['delete', 'clusters', '--all', '--wait=false']);
});

const initialized = (c: ClusterResource) =>
  condition(c, 'Initialized')?.status === 'True' && Boolean(c.spec?.connection?.token);
const agentAvailable = (c: ClusterResource) =>
  condition(c, 'AgentAvailable')?.status === 'True' && Boolean(c.spec?.connection?.kubeconfig);

/**
 * kubectl with the Cluster's own kubeconfig, its server replaced by the proxy's loopback port (ClusterIPs do not route
 * here).
 */
function memberKubectl(
  c: ClusterResource,
  args: string[],
  server = `https://127.0.0.1:${c.spec!.connection!.kubernetesAPIServerPort}`,
) {
  const path = join(host.dir, `${c.metadata.name}-${Date.now()}.kubeconfig`);
  writeFileSync(path, kubeconfigOf(c), { mode: 0o600 });
  return kubectl(path, ['--server', server, ...args]);
}

function httpGet(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, headers }, (res) => {
      let body = '';
      res
        .setEncoding('utf8')
        .on('data', (d: string) => {
          body += d;
        })
        .on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The SANs of the certificate served on a cluster's kubernetes port. */
function servedNames(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      resolve(s.getPeerCertificate().subjectaltname ?? '');
      s.destroy();
    });
    s.on('error', reject);
  });
}

function listening(port: number): Promise<boolean> {
  return httpGet(port, '/').then(
    () => true,
    (err: NodeJS.ErrnoException) => err.code !== 'ECONNREFUSED',
  );
}

test(
  "KubeSphere's flow: a Cluster applied with kubectl is initialized, " +
    'its agent connects, its kubeconfig reaches the member',
  async () => {
    const proxy = await host.startProxy();
    await host.applyCluster('alpha');
    const c = await host.waitCluster('alpha', 'initialized', initialized);
    const conn = c.spec!.connection!;
    assert.match(conn.token!, /^[0-9a-f]{64}$/);
    assert.ok(
      conn.kubernetesAPIServerPort! >= 6000 && conn.kubernetesAPIServerPort! <= 7000,
      `port ${conn.kubernetesAPIServerPort}`,
    );
    assert.equal(conn.kubesphereAPIServerPort, conn.kubernetesAPIServerPort! + 10000);
    assert.deepEqual(condition(c, 'Initialized'), {
      ...condition(c, 'Initialized'),
      status: 'True',
      reason: 'Initialized',
      message: 'Cluster has been initialized',
    });

    const svc = (await host.getService('mc-alpha'))!;
    assert.ok(svc, 'Service mc-alpha exists');
    // the cluster's own labels, and tower's (what `tower uninstall` finds)
    assert.deepEqual(svc.metadata.labels, {
      'app.kubernetes.io/name': 'mc-alpha',
      app: 'mc-alpha',
      'app.kubernetes.io/managed-by': 'tower',
      'app.kubernetes.io/part-of': 'tower',
      'app.kubernetes.io/instance': 'tower-proxy',
    });
    assert.deepEqual(svc.spec.selector, { 'app.kubernetes.io/name': 'tower', app: 'tower' });
    assert.deepEqual(
      svc.spec.ports.map((p) => [p.name, p.port, p.targetPort, p.protocol]),
      [
        ['kubernetes', 6443, conn.kubernetesAPIServerPort, 'TCP'],
        ['kubesphere', 80, conn.kubesphereAPIServerPort, 'TCP'],
      ],
    );
    assert.equal(conn.kubernetesAPIEndpoint, `https://${svc.spec.clusterIP}:6443`);
    assert.equal(conn.kubesphereAPIEndpoint, `http://${svc.spec.clusterIP}:80`);
    assert.equal(condition(c, 'AgentAvailable'), undefined, 'no agent yet');

    const agent = host.startAgent('alpha', conn.token!, proxy.agentPort, member, ['--kubesphere-service', ksAddress]);
    const up = await host.waitCluster('alpha', 'AgentAvailable', agentAvailable);
    assert.equal(condition(up, 'AgentAvailable')!.message, 'Agent has connected to proxy successfully.');
    assert.equal(
      condition(up, 'Initialized')!.lastTransitionTime,
      condition(c, 'Initialized')!.lastTransitionTime,
      'other conditions untouched',
    );
    const kc = parseYaml(kubeconfigOf(up)) as {
      clusters: { cluster: { server: string } }[];
      users: { user: { 'client-certificate-data': string } }[];
    };
    assert.equal(kc.clusters[0]!.cluster.server, conn.kubernetesAPIEndpoint);
    const cert = new X509Certificate(Buffer.from(kc.users[0]!.user['client-certificate-data'], 'base64'));
    assert.match(cert.subject, /CN=kubernetes-admin/);
    assert.match(cert.subject, /O=system:masters/);

    const ns = await memberKubectl(up, ['get', 'namespaces', '-o', 'name']);
    assert.equal(ns.code, 0, ns.stderr);
    assert.match(ns.stdout, /namespace\/kube-system/);
    // the serving certificate names the Service, so that the kubeconfig works inside the host cluster
    const sans = await servedNames(conn.kubernetesAPIServerPort!);
    for (const n of [`IP Address:${svc.spec.clusterIP}`, 'DNS:mc-alpha.kubesphere-system.svc'])
      assert.ok(sans.includes(n), `${n} in ${sans}`);
    // the kubesphere port reaches the agent's ks-apiserver in plain HTTP, the user's Authorization intact
    const ksAnswer = await httpGet(
      conn.kubesphereAPIServerPort!,
      '/kapis/resources.kubesphere.io/v1alpha3/namespaces',
      {
        authorization: 'Bearer user-jwt',
      },
    );
    assert.equal(ksAnswer.status, 200, ksAnswer.body);
    assert.deepEqual(JSON.parse(ksAnswer.body), {
      path: '/kapis/resources.kubesphere.io/v1alpha3/namespaces',
      authorization: 'Bearer user-jwt',
      host: ksAddress,
    });
    // a client without tower's certificate gets nothing on the kubernetes port
    const anonymous = await run('curl', [
      '-sk',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      `https://127.0.0.1:${conn.kubernetesAPIServerPort}/api`,
    ]);
    assert.equal(anonymous.stdout, '401');

    // tower kubeconfig prints the same kubeconfig
    const printed = await host.tower(['kubeconfig', 'alpha']);
    assert.equal(printed.code, 0, printed.stderr);
    assert.equal(printed.stdout, kubeconfigOf(up));

    await agent.stop('SIGKILL');
    const down = await host.waitCluster(
      'alpha',
      'AgentAvailable False',
      (x) => condition(x, 'AgentAvailable')?.status === 'False',
    );
    assert.equal(condition(down, 'AgentAvailable')!.message, 'Agent has not connected to proxy.');
    assert.equal(down.spec!.connection!.kubeconfig, up.spec!.connection!.kubeconfig, 'the kubeconfig stays');
  },
);

test(
  'tower token and tower kubeconfig in Kubernetes mode: ' +
    'create the Cluster, wait for the proxy, print what it filled in',
  async () => {
    const noProxy = await host.tower(['token', 'gamma', '--timeout', '2s']);
    assert.equal(noProxy.code, 1);
    assert.match(
      noProxy.stderr,
      pattern(
        /tower token: the proxy has not initialized Cluster "gamma": is a tower proxy /,
        /running against https:\/\/127\.0\.0\.1:\d+\? .*\(waited 2s; more with --timeout\)/,
      ),
    );
    const proxy = await host.startProxy();
    const r = await host.tower(['token', 'gamma']);
    assert.equal(r.code, 0, r.stderr);
    const c = (await host.get('gamma'))!;
    assert.equal(c.spec!.connection!.type, 'proxy');
    assert.equal(c.spec!.joinFederation, true);
    assert.match(r.stdout, new RegExp(`^token: ${c.spec!.connection!.token}$`, 'm'));
    assert.match(
      r.stdout,
      new RegExp(
        `tower agent --name gamma --token ${c.spec!.connection!.token} --proxy-server ` +
          `http://127\\.0\\.0\\.1:${proxy.agentPort} --proxy-fingerprint SHA256:`,
      ),
    );

    const noAgent = await host.tower(['kubeconfig', 'gamma', '--timeout', '1s']);
    assert.equal(noAgent.code, 1);
    assert.match(noAgent.stderr, /no agent of Cluster "gamma" has connected to the proxy yet/);
    const unknown = await host.tower(['kubeconfig', 'nope']);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /Cluster "nope" not found .*tower token nope --kubeconfig/);

    // the join command works as printed; --rotate drops the agent that used the old token
    const join = joinCommand(r.stdout)!.replace('<member kubeconfig>', member.kubeconfig).split(' ');
    assert.equal(join[0], TOWER, 'the join command names the binary as it was invoked');
    const joined = new TowerProcess('agent gamma', join.slice(1), {});
    host.processes.push(joined);
    await host.waitCluster('gamma', 'AgentAvailable', agentAvailable);
    const gw = await host.tower(['kubeconfig', 'gamma', '--gateway']);
    assert.equal(gw.code, 0, gw.stderr);
    assert.match(gw.stdout, new RegExp(`server: https://127\\.0\\.0\\.1:\\d+/clusters/gamma`));
    const rotated = await host.tower(['token', 'gamma', '--rotate']);
    assert.equal(rotated.code, 0, rotated.stderr);
    assert.notEqual(/^token: (\w+)$/m.exec(rotated.stdout)![1], c.spec!.connection!.token);
    await joined.waitFor(/Unauthorized agent|refused/i, 30_000);

    const wrongType = await host.kubectl(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'cluster.kubesphere.io/v1alpha1',
        kind: 'Cluster',
        metadata: { name: 'direct' },
        spec: { joinFederation: true, connection: { type: 'direct' } },
      }),
    );
    assert.equal(wrongType.code, 0, wrongType.stderr);
    const refused = await host.tower(['token', 'direct']);
    assert.equal(refused.code, 1);
    assert.match(
      refused.stderr,
      pattern(
        /Cluster "direct" exists, but its spec\.connection\.type /,
        /is "direct", not "proxy"; .*kubectl patch cluster direct/,
      ),
    );
  },
);

test(
  'tower clusters lists the proxy Clusters with their AgentAvailable condition; ' +
    'tower delete says what to delete instead',
  async () => {
    await host.startProxy();
    await host.applyCluster('omega');
    await host.waitCluster('omega', 'initialized', initialized);
    const r = await host.tower(['clusters', '-o', 'wide']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^NAME\s+AGENTS\s+CONNECTED\s+LAST SEEN\s+VERSION\s+ADDRESS\s+NOTE$/m);
    assert.match(r.stdout, /^omega\s+0\s+-\s+(never|\d+[smhd] ago)\s+-\s+-\s+\S/m);
    const json = JSON.parse((await host.tower(['clusters', '-o', 'json'])).stdout) as {
      clusters: { name: string; agents: number }[];
    };
    assert.deepEqual(
      json.clusters.map((c) => [c.name, c.agents]),
      [['omega', 0]],
    );
    const del = await host.tower(['delete', 'omega']);
    assert.equal(del.code, 1);
    assert.match(
      del.stderr,
      pattern(
        /^tower delete: in Kubernetes mode cluster "omega" is KubeSphere's Cluster resource, /m,
        /which tower does not delete: kubectl --kubeconfig /m,
        /<host> delete cluster\.cluster\.kubesphere\.io omega/m,
      ),
    );
    assert.ok(await host.get('omega'), 'the Cluster is still there');
  },
);

test('a restarted proxy re-allocates nothing, rewrites no kubeconfig, and its agents come back', async () => {
  let proxy = await host.startProxy();
  await host.applyCluster('delta');
  const c = await host.waitCluster('delta', 'initialized', initialized);
  host.startAgent('delta', c.spec!.connection!.token!, proxy.agentPort, member);
  const up = await host.waitCluster('delta', 'AgentAvailable', agentAvailable);

  await proxy.stop('SIGTERM');
  proxy = await host.startProxy([], { agentPort: proxy.agentPort });
  await proxy.waitFor(/agent connected.*cluster=delta/, 30_000);
  const ns = await memberKubectl(up, ['get', 'namespaces', '-o', 'name']);
  assert.equal(ns.code, 0, ns.stderr);
  const after = (await host.get('delta'))!;
  assert.deepEqual(after.spec, up.spec, 'ports, token, endpoints and kubeconfig unchanged');
  assert.equal(
    condition(after, 'AgentAvailable')!.lastTransitionTime,
    condition(up, 'AgentAvailable')!.lastTransitionTime,
    'no AgentAvailable flap',
  );
  assert.doesNotMatch(proxy.output, /wrote the cluster's kubeconfig/);
});

test('a Cluster that arrives with ports, token and Service set (as KubeSphere 3.0 writes it) keeps them', async () => {
  const token = 'ab'.repeat(32);
  await host.must(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: {
        name: 'mc-epsilon',
        namespace: 'kubesphere-system',
        labels: { 'app.kubernetes.io/name': 'mc-epsilon', app: 'mc-epsilon' },
      },
      spec: {
        selector: { 'app.kubernetes.io/name': 'tower', app: 'tower' },
        ports: [
          { name: 'kubernetes', port: 6443, targetPort: 6421 },
          { name: 'kubesphere', port: 80, targetPort: 16421 },
        ],
      },
    }),
  );
  const svc = (await host.getService('mc-epsilon'))!;
  await host.applyCluster('epsilon', {
    connection: {
      token,
      kubernetesAPIServerPort: 6421,
      kubesphereAPIServerPort: 16421,
      kubernetesAPIEndpoint: `https://${svc.spec.clusterIP}:6443`,
    },
  });
  const proxy = await host.startProxy();
  const c = await host.waitCluster('epsilon', 'initialized', initialized);
  assert.equal(c.spec!.connection!.token, token);
  assert.equal(c.spec!.connection!.kubernetesAPIServerPort, 6421);
  assert.equal(c.spec!.connection!.kubesphereAPIServerPort, 16421);
  assert.equal(c.spec!.connection!.kubernetesAPIEndpoint, `https://${svc.spec.clusterIP}:6443`);
  assert.equal(
    c.spec!.connection!.kubesphereAPIEndpoint,
    `http://${svc.spec.clusterIP}:80`,
    'only the missing endpoint filled',
  );
  assert.equal((await host.getService('mc-epsilon'))!.spec.clusterIP, svc.spec.clusterIP, 'the same Service');
  await proxy.waitFor(/serving cluster ports cluster=epsilon kubernetes=127\.0\.0\.1:6421/);
  assert.doesNotMatch(proxy.output, /allocated ports cluster=epsilon/);
});

test(
  'externalKubeAPIEnabled: a LoadBalancer Service with the annotated ' +
    'annotations, then the external endpoint once it has an address',
  async () => {
    const proxy = await host.startProxy();
    await host.applyCluster(
      'zeta',
      { externalKubeAPIEnabled: true },
      {
        'tower.kubesphere.io/external-lb-service-annoations': JSON.stringify({
          'lb.example.com/type': 'internal',
          'lb.example.com/size': 'small',
        }),
      },
    );
    const c = await host.waitCluster('zeta', 'initialized', initialized);
    const svc = await waitUntil('a LoadBalancer Service', async () => {
      const s = await host.getService('mc-zeta');
      return s?.spec.type === 'LoadBalancer' ? s : undefined;
    });
    assert.equal(svc.metadata.annotations?.['lb.example.com/type'], 'internal');
    assert.equal(svc.metadata.annotations?.['lb.example.com/size'], 'small');
    assert.equal(condition(c, 'ExternalAccessReady'), undefined, 'not ready without an address');

    // as a cloud controller would
    await host.must([
      '-n',
      'kubesphere-system',
      'patch',
      'service',
      'mc-zeta',
      '--subresource=status',
      '--type=merge',
      '-p',
      '{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.10"}]}}}',
    ]);
    const ready = await host.waitCluster(
      'zeta',
      'ExternalAccessReady',
      (x) => condition(x, 'ExternalAccessReady')?.status === 'True',
    );
    assert.equal(ready.spec!.connection!.externalKubernetesAPIEndpoint, 'https://192.0.2.10:6443');
    await waitUntil('the LB address in the serving certificate', async () =>
      (await servedNames(c.spec!.connection!.kubernetesAPIServerPort!)).includes('IP Address:192.0.2.10'),
    );

    // a hostname goes in as a DNS name, not among the IPs
    await host.must([
      '-n',
      'kubesphere-system',
      'patch',
      'service',
      'mc-zeta',
      '--subresource=status',
      '--type=merge',
      '-p',
      '{"status":{"loadBalancer":{"ingress":[{"hostname":"lb.example.com"}]}}}',
    ]);
    await host.waitCluster(
      'zeta',
      'the hostname endpoint',
      (x) => x.spec?.connection?.externalKubernetesAPIEndpoint === 'https://lb.example.com:6443',
    );
    await waitUntil('the LB hostname in the serving certificate', async () =>
      (await servedNames(c.spec!.connection!.kubernetesAPIServerPort!)).includes('DNS:lb.example.com'),
    );

    // an unusable annotation is reported with the cluster's name; the Service stays as it is
    await host.must([
      'annotate',
      '--overwrite',
      'cluster',
      'zeta',
      'tower.kubesphere.io/external-lb-service-annoations={not json',
    ]);
    await proxy.waitFor(
      /cluster "zeta": annotation tower\.kubesphere\.io\/external-lb-service-annoations is not usable/,
    );
    assert.equal((await host.getService('mc-zeta'))!.spec.type, 'LoadBalancer');

    // switched off: a ClusterIP Service again (the node ports the load balancer had go with it)
    await host.must(['patch', 'cluster', 'zeta', '--type=merge', '-p', '{"spec":{"externalKubeAPIEnabled":false}}']);
    await waitUntil('a ClusterIP Service', async () => (await host.getService('mc-zeta'))?.spec.type === 'ClusterIP');
    const off = await host.waitCluster(
      'zeta',
      'ExternalAccessReady False',
      (x) => condition(x, 'ExternalAccessReady')?.status === 'False',
    );
    assert.equal(condition(off, 'Initialized')?.status, 'True');
  },
);

test(
  'a deleted mc-<name> Service is recreated; ' + 'a deleted Cluster takes its Service, sessions and ports with it',
  async () => {
    const proxy = await host.startProxy();
    await host.applyCluster('eta');
    const c = await host.waitCluster('eta', 'initialized', initialized);
    const agent = host.startAgent('eta', c.spec!.connection!.token!, proxy.agentPort, member);
    await host.waitCluster('eta', 'AgentAvailable', agentAvailable);

    await host.must(['-n', 'kubesphere-system', 'delete', 'service', 'mc-eta']);
    const again = await waitUntil('mc-eta to be recreated', () => host.getService('mc-eta'));
    const fresh = await host.waitCluster(
      'eta',
      'the endpoint of the new Service',
      (x) => x.spec?.connection?.kubernetesAPIEndpoint === `https://${again.spec.clusterIP}:6443`,
    );
    // the kubeconfig follows the endpoint
    await host.waitCluster('eta', 'a kubeconfig for the new endpoint', (x) =>
      kubeconfigOf(x).includes(fresh.spec!.connection!.kubernetesAPIEndpoint!),
    );

    const port = c.spec!.connection!.kubernetesAPIServerPort!;
    assert.ok(await listening(port));
    await host.must(['delete', 'cluster', 'eta']);
    await waitUntil('mc-eta to be deleted', async () => !(await host.getService('mc-eta')));
    await proxy.waitFor(/cluster removed from the store cluster=eta sessionsClosed=1/);
    await waitUntil('the port to close', async () => !(await listening(port)));
    await agent.waitFor(/Unauthorized agent|refused|disconnected/i, 30_000);

    // the ports are free for another Cluster
    await host.applyCluster('theta', { connection: { kubernetesAPIServerPort: port } });
    await host.waitCluster('theta', 'initialized', initialized);
    await proxy.waitFor(new RegExp(`serving cluster ports cluster=theta kubernetes=127\\.0\\.0\\.1:${port}`));
  },
);

test('bad Clusters are reported with their names and leave the others served', async () => {
  const proxy = await host.startProxy();
  await host.applyCluster('iota');
  const good = await host.waitCluster('iota', 'initialized', initialized);
  const port = good.spec!.connection!.kubernetesAPIServerPort!;

  // the structural schema makes the API itself refuse a malformed spec
  const refused = await host.kubectl(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'cluster.kubesphere.io/v1alpha1',
      kind: 'Cluster',
      metadata: { name: 'bad' },
      spec: { joinFederation: true, connection: 'x' },
    }),
  );
  assert.notEqual(refused.code, 0);

  // two Clusters on one port after a manual edit: the younger one is reported, the older keeps it
  await host.applyCluster('kappa');
  await host.waitCluster('kappa', 'initialized', initialized);
  await host.must([
    'patch',
    'cluster',
    'kappa',
    '--type=merge',
    '-p',
    JSON.stringify({ spec: { connection: { kubernetesAPIServerPort: port } } }),
  ]);
  await proxy.waitFor(new RegExp(`cluster "kappa": its ports ${port}/\\d+ are taken by Cluster "iota"`));
  assert.ok(await listening(port));
  assert.deepEqual((await host.get('iota'))!.spec, good.spec);
  // said once, not at every reconcile; and said when it is over
  await host.must(['label', 'cluster', 'kappa', 'touched=yes']);
  await host.must([
    'patch',
    'cluster',
    'kappa',
    '--type=merge',
    '-p',
    JSON.stringify({ spec: { connection: { kubernetesAPIServerPort: 6999, kubesphereAPIServerPort: 16999 } } }),
  ]);
  await proxy.waitFor(/cluster "kappa": the ports problem is resolved/);
  assert.equal(proxy.output.match(/cluster "kappa": its ports/g)?.length, 1);
  await proxy.waitFor(/serving cluster ports cluster=kappa kubernetes=127\.0\.0\.1:6999/);

  // a CRD without a schema (and with a status subresource) lets anything through: tower checks it
  await host.must(['apply', '-f', '-'], JSON.stringify(looseCrd()));
  await waitUntil(
    'the loose CRD to be served',
    async () =>
      (
        await host.kubectl(
          ['apply', '-f', '-'],
          JSON.stringify({
            apiVersion: 'cluster.kubesphere.io/v1alpha1',
            kind: 'Cluster',
            metadata: { name: 'lambda' },
            spec: { joinFederation: true, connection: 'x' },
          }),
        )
      ).code === 0,
  );
  await proxy.waitFor(
    /cluster "lambda": spec\.connection is "x", not an object; tower ignores this Cluster until it is fixed/,
  );
  await host.must(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'cluster.kubesphere.io/v1alpha1',
      kind: 'Cluster',
      metadata: { name: 'mu' },
      spec: { joinFederation: true, connection: { type: 'proxy', kubernetesAPIServerPort: '6500' } },
    }),
  );
  await proxy.waitFor(/cluster "mu": spec\.connection\.kubernetesAPIServerPort is "6500", not a port number/);
  // Cluster names are DNS subdomains; tower's names are labels
  await host.applyCluster('host.example');
  await proxy.waitFor(/cluster "host\.example": the name is not usable: a cluster name must be a DNS-1123 label/);
  // with the status subresource, conditions still land
  await host.applyCluster('nu');
  await host.waitCluster('nu', 'initialized', initialized);
  assert.ok(proxy.running);
  const stillGood = await httpGet(good.spec!.connection!.kubesphereAPIServerPort!, '/').catch(() => undefined);
  assert.equal(stillGood?.status, 503, 'iota still served (no agent: 503)');
  await host.must(['apply', '-f', CRD_FIXTURE]);
});

test(
  'a host API outage cuts nobody off from the members, ' + 'and the proxy resumes reconciling when the API is back',
  async () => {
    const proxy = await host.startProxy();
    await host.applyCluster('pi');
    const c = await host.waitCluster('pi', 'initialized', initialized);
    const agent = host.startAgent('pi', c.spec!.connection!.token!, proxy.agentPort, member);
    const up = await host.waitCluster('pi', 'AgentAvailable', agentAvailable);

    await host.cluster.killApiserver();
    const during = await memberKubectl(up, ['get', 'namespaces', '-o', 'name']);
    assert.equal(during.code, 0, during.stderr);
    await proxy.waitFor(/watch of (Clusters|Services in kubesphere-system) failed; restarting/, 30_000);
    // a change the proxy cannot write now is written once the API is back
    await agent.stop('SIGKILL');
    await proxy.waitFor(/cannot reconcile cluster; retrying cluster=pi/, 30_000);
    await host.cluster.startApiserver();
    await host.waitCluster(
      'pi',
      'AgentAvailable False',
      (x) => condition(x, 'AgentAvailable')?.status === 'False',
      60_000,
    );

    // the informers are back: a deleted Service is recreated, a new Cluster initialized
    await host.must(['-n', 'kubesphere-system', 'delete', 'service', 'mc-pi']);
    await waitUntil('mc-pi to be recreated', () => host.getService('mc-pi'), 60_000);
    await host.applyCluster('rho');
    await host.waitCluster('rho', 'initialized', initialized, 60_000);
    assert.ok(proxy.running);
    // the watch lagged behind the proxy's own writes meanwhile: still one allocation per Cluster
    for (const name of ['pi', 'rho'])
      assert.equal(proxy.output.match(new RegExp(`allocated ports cluster=${name} `, 'g'))?.length, 1, proxy.output);
  },
);

test(
  'two controllers racing on the same Clusters ' +
    "(as KubeSphere's own one does) settle on one set of values, and nothing flaps",
  async () => {
    // without --leader-elect both reconcile; each serves the cluster ports on its own loopback address
    const a = await host.startProxy(['--host', '127.0.0.2']);
    const b = await host.startProxy(['--host', '127.0.0.3']);
    const names = Array.from({ length: 8 }, (_, i) => `race${i}`);
    const items = names.map((name) => ({
      apiVersion: 'cluster.kubesphere.io/v1alpha1',
      kind: 'Cluster',
      metadata: { name },
      spec: { joinFederation: true, connection: { type: 'proxy' } },
    }));
    await host.must(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));
    const settled = await Promise.all(names.map((n) => host.waitCluster(n, 'initialized', initialized)));
    await new Promise((r) => setTimeout(r, 3000));
    const ports = new Set<number>();
    for (const c of settled) {
      const now = (await host.get(c.metadata.name))!;
      assert.deepEqual(now.spec, c.spec, `${c.metadata.name} changed after it settled`);
      const conn = now.spec!.connection!;
      assert.ok(!ports.has(conn.kubernetesAPIServerPort!), `port ${conn.kubernetesAPIServerPort} given twice`);
      ports.add(conn.kubernetesAPIServerPort!);
      const svc = (await host.getService(`mc-${c.metadata.name}`))!;
      assert.deepEqual(
        svc.spec.ports.map((p) => p.targetPort),
        [conn.kubernetesAPIServerPort, conn.kubesphereAPIServerPort],
      );
      assert.equal(conn.kubernetesAPIEndpoint, `https://${svc.spec.clusterIP}:6443`);
    }
    for (const p of [a, b]) {
      assert.ok(p.running);
      // the loser of a race learns of it from the conflict, before it has touched the Service
      assert.doesNotMatch(p.output, /updated Service cluster=race/);
    }
  },
);

test(
  '--leader-elect: every replica serves and one writes; ' + 'when it dies another takes the lease and keeps everything',
  async () => {
    const times = fastReplicaFlags('4s');
    const agentPort = await freePort();
    const first = await host.startProxy([...times, '--host', '127.0.0.2', '--server-id', 'first'], { agentPort });
    await first.waitFor(/leader election: leading/);
    // the second serves at once (each replica on an address of its own, as pods are), and does not write
    const second = await host.startProxy([...times, '--host', '127.0.0.3', '--server-id', 'second'], { agentPort });
    await second.waitFor(/leader election: waiting for the lease/);
    const get = async (address: string, path: string) => {
      const r = await fetch(`http://${address}:${agentPort}${path}`);
      return [r.status, await r.text()] as const;
    };
    const [status, verbose] = await get('127.0.0.3', '/readyz?verbose');
    assert.equal(status, 200, verbose);
    assert.match(verbose, /^\[\+\]shutdown ok$/m);
    await waitUntil(
      'the leader metric on both',
      async () =>
        /^tower_proxy_leader 0$/m.test((await get('127.0.0.3', '/metrics'))[1]) &&
        /^tower_proxy_leader 1$/m.test((await get('127.0.0.2', '/metrics'))[1]),
      5000,
    );

    await host.applyCluster('xi');
    const c = await host.waitCluster('xi', 'initialized', initialized);
    assert.doesNotMatch(second.output, /allocated ports/, 'only the leader writes');
    // the agent reaches the follower only; the leader learns of it from its peer
    const agent = new TowerProcess(
      'agent xi',
      [
        'agent',
        '--name',
        'xi',
        '--token',
        c.spec!.connection!.token!,
        '--proxy-server',
        `http://127.0.0.3:${agentPort}`,
        '--kubeconfig',
        member.kubeconfig,
        '--max-retry-interval',
        '1s',
        '--proxy-fingerprint',
        host.fingerprint,
      ],
      {},
    );
    host.processes.push(agent);
    const up = await host.waitCluster('xi', 'AgentAvailable', agentAvailable);
    assert.match(second.output, /agent connected.*cluster=xi/);
    // through the leader's port of the cluster: forwarded to the replica that holds the agent
    const port = up.spec!.connection!.kubernetesAPIServerPort!;
    const viaFirst = await memberKubectl(up, ['get', 'namespaces', '-o', 'name'], `https://127.0.0.2:${port}`);
    assert.equal(viaFirst.code, 0, viaFirst.stderr);

    await first.stop('SIGKILL');
    await second.waitFor(/leader election: leading/, 20_000);
    const ns = await memberKubectl(up, ['get', 'namespaces', '-o', 'name'], `https://127.0.0.3:${port}`);
    assert.equal(ns.code, 0, ns.stderr);
    await new Promise((r) => setTimeout(r, 1500));
    const now = (await host.get('xi'))!;
    assert.deepEqual(now.spec, up.spec, 'the new leader keeps everything');
    assert.equal(
      condition(now, 'AgentAvailable')?.lastTransitionTime,
      condition(up, 'AgentAvailable')?.lastTransitionTime,
      'AgentAvailable did not flip',
    );

    // a leader that is told to stop hands the lease over at once
    const third = await host.startProxy([...times, '--host', '127.0.0.4', '--server-id', 'third'], { agentPort });
    await third.waitFor(/leader election: waiting for the lease/);
    await second.stop('SIGTERM');
    assert.match(second.output, /released the lease/);
    await third.waitFor(/leader election: leading/, 20_000);

    // a leader that finds the lease taken steps down and serves on, campaigning again
    await waitUntil('the lease to be taken over by hand', async () => {
      // the leader renews every 500 ms: a replace may meet a newer resourceVersion, and is tried again
      const lease = JSON.parse(await host.must(['-n', 'kubesphere-system', 'get', 'lease', 'tower', '-o', 'json']));
      lease.spec.holderIdentity = 'intruder';
      return (await host.kubectl(['replace', '-f', '-'], JSON.stringify(lease))).code === 0;
    });
    await third.waitFor(
      /leader election lost; this replica serves on and campaigns again .*why="the lease is now held by intruder"/,
    );
    assert.ok(third.running);
    assert.equal((await get('127.0.0.4', '/readyz'))[0], 200);
    // the intruder does not renew: the lease comes back to the replica
    await third.waitFor(/leader election: leading/, 20_000, third.output.indexOf('leader election lost'));
  },
);

test(
  '--leader-elect: a replica waiting for a Lease whose holder died exits after its drain on SIGTERM, ' +
    'without waiting for the Lease to lapse or for connections that never spoke',
  async () => {
    // the writers' Lease, renewed just now by a replica that is gone: it holds for 10 minutes
    await host.must(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { name: 'tower', namespace: 'kubesphere-system' },
        spec: {
          holderIdentity: 'dead-replica',
          leaseDurationSeconds: 600,
          acquireTime: new Date().toISOString().replace('Z', '000Z'),
          renewTime: new Date().toISOString().replace('Z', '000Z'),
        },
      }),
    );
    const waiting = await host.startProxy([
      '--leader-elect',
      '--leader-elect-retry-period',
      '500ms',
      '--host',
      '127.0.0.4',
      '--server-id',
      'waiting',
    ]);
    await waiting.waitFor(/leader election: waiting for the lease .*holder=dead-replica/);
    // and connections that wait for nothing in particular, as a load balancer's do: one that never speaks, one
    // that finished TLS and sends no request (each would be closed by its own deadline, 30 s at most)
    const gatewayPort = Number(/gateway=127\.0\.0\.4:(\d+)/.exec(waiting.output)![1]);
    const held = [
      connect(gatewayPort, '127.0.0.4'),
      connect(waiting.agentPort, '127.0.0.4'),
      tlsConnect({ host: '127.0.0.4', port: gatewayPort, rejectUnauthorized: false }),
    ];
    for (const socket of held) socket.on('error', () => undefined);
    await new Promise((resolve) => held[2]!.once('secureConnect', resolve));
    waiting.child.kill('SIGTERM');
    // bounded far below the Lease's 10 minutes and below the held connections' deadlines: ended by SIGKILL, it
    // would exit with no code
    const killer = setTimeout(() => waiting.child.kill('SIGKILL'), 20_000);
    const code = await waiting.exited;
    clearTimeout(killer);
    for (const socket of held) socket.destroy();
    assert.equal(code, 0, waiting.output);
    assert.match(waiting.output, /drained/);
    const holder = await host.must([
      'get',
      'lease',
      '-n',
      'kubesphere-system',
      'tower',
      '-o',
      'jsonpath={.spec.holderIdentity}',
    ]);
    assert.equal(holder, 'dead-replica', 'the replica took the Lease on its way out');
    await host.must(['delete', 'lease', '-n', 'kubesphere-system', 'tower']);
  },
);

test("tower install prints manifests that apply to real apiservers; --with-crd: KubeSphere's Cluster CRD", async () => {
  // asked, the test apiserver (1.20) says it serves no policy/v1: the budget is policy/v1beta1
  const proxyYaml = await tower([
    'install',
    'proxy',
    '--image',
    'registry.example/tower:1.0',
    '--replicas',
    '2',
    '--kubeconfig',
    host.kubeconfig,
  ]);
  assert.equal(proxyYaml.code, 0, proxyYaml.stderr);
  const docs = proxyYaml.stdout
    .split(/^---$/m)
    .map((d) => parseYaml(d))
    .filter(Boolean) as { kind: string; spec?: Record<string, unknown> }[];
  // shared with KubeSphere: only on request (this host has KubeSphere's own, which --with-crd would refuse)
  assert.equal(
    docs.find((d) => d.kind === 'CustomResourceDefinition' || d.kind === 'Namespace'),
    undefined,
  );
  // asked of a host without a Cluster CRD (this one has KubeSphere's, which --with-crd would refuse)
  const withCrd = await tower(['install', 'proxy', '--with-crd', '--kubeconfig', member.kubeconfig]);
  assert.equal(withCrd.code, 0, withCrd.stderr);
  const crd = withCrd.stdout
    .split(/^---$/m)
    .map((d) => parseYaml(d) as { kind?: string; spec?: unknown })
    .find((d) => d?.kind === 'CustomResourceDefinition')!;
  const theirs = parseYaml(readFileSync(CRD_FIXTURE, 'utf8')) as { spec: Record<string, unknown> };
  assert.deepEqual(crd.spec, theirs.spec, "the CRD is KubeSphere's");
  assert.match(proxyYaml.stdout, /--leader-elect/);
  // what a rolling update without a failed request needs
  const pdb = docs.find((d) => d.kind === 'PodDisruptionBudget')! as { apiVersion?: string; spec?: unknown };
  assert.equal(pdb.apiVersion, 'policy/v1beta1');
  assert.deepEqual(pdb.spec, {
    maxUnavailable: 1,
    selector: { matchLabels: { 'app.kubernetes.io/name': 'tower', app: 'tower' } },
  });
  const deployment = docs.find((d) => d.kind === 'Deployment') as unknown as {
    spec: {
      strategy: unknown;
      template: {
        spec: {
          terminationGracePeriodSeconds: number;
          containers: { args: string[]; readinessProbe: unknown; env: { name: string }[] }[];
        };
      };
    };
  };
  assert.deepEqual(deployment.spec.strategy, {
    type: 'RollingUpdate',
    rollingUpdate: { maxUnavailable: 0, maxSurge: 1 },
  });
  const container = deployment.spec.template.spec.containers[0]!;
  assert.ok(container.args.includes('--shutdown-delay=5s'));
  assert.ok(deployment.spec.template.spec.terminationGracePeriodSeconds >= 5 + 25);
  assert.deepEqual(
    container.env.map((e) => e.name),
    ['POD_NAME', 'POD_IP'],
  );
  assert.match(JSON.stringify(container.readinessProbe), /"path":"\/readyz"/);
  assert.equal(
    (
      docs.find((d) => d.kind === 'Service' && (d as { metadata?: { name?: string } }).metadata?.name === 'tower')!
        .spec as { sessionAffinity: string }
    ).sessionAffinity,
    'None',
  );
  for (let i = 0; i < 2; i++) {
    const applied = await host.kubectl(['apply', '-f', '-'], proxyYaml.stdout);
    assert.equal(applied.code, 0, applied.stderr);
  }
  const unverified = await tower([
    'install',
    'agent',
    '--name',
    'alpha',
    '--token',
    'a'.repeat(64),
    '--proxy-server',
    'http://tower.example.com:8080',
  ]);
  assert.equal(unverified.code, 1);
  assert.match(
    unverified.stderr,
    /^tower install: --proxy-fingerprint is required with a plain http:\/\/ --proxy-server/,
  );
  const agentYaml = await tower([
    'install',
    'agent',
    '--with-namespace',
    '--name',
    'alpha',
    '--token',
    'a'.repeat(64),
    '--proxy-server',
    'http://tower.example.com:8080',
    '--proxy-fingerprint',
    `SHA256:${'A'.repeat(43)}`,
  ]);
  assert.equal(agentYaml.code, 0, agentYaml.stderr);
  assert.doesNotMatch(agentYaml.stdout.replace(/token: a{64}/, ''), /a{64}/, 'the token only in the Secret');
  const applied = await kubectl(member.kubeconfig, ['apply', '-f', '-'], agentYaml.stdout);
  assert.equal(applied.code, 0, applied.stderr);
  const missing = await tower(['install', 'agent', '--name', '../x', '--token', 't', '--proxy-server', 'http://p']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /tower install: invalid --name "\.\.\/x": a cluster name must be a DNS-1123 label/);
});

test('in a pod: the service account of `tower install proxy`, limited to its RBAC, runs the whole flow', async () => {
  const manifests = await tower(['install', 'proxy', '--replicas', '2', '--kube-version', 'v1.20.2']);
  await host.must(['apply', '-f', '-'], manifests.stdout);
  const token = (await host.must(['-n', 'kubesphere-system', 'create', 'token', 'tower', '--duration', '1h'])).trim();
  // what the kubelet mounts into a pod, in a mount namespace of the proxy's own
  const server = new URL(host.cluster.server);
  const script = [
    'mount -t tmpfs tower-test /run',
    'd=/var/run/secrets/kubernetes.io/serviceaccount',
    'mkdir -p $d',
    'printf %s "$SA_TOKEN" > $d/token',
    'printf %s "$SA_CA" > $d/ca.crt',
    'printf kubesphere-system > $d/namespace',
    'unset SA_TOKEN SA_CA',
    'exec "$@"',
  ].join(' && ');
  const agentPort = await freePort();
  const proxy = new TowerProcess(
    'in-cluster proxy',
    [
      '-m',
      '--propagation',
      'private',
      'sh',
      '-c',
      script,
      'sh',
      TOWER,
      'proxy',
      '--host',
      '127.0.0.1',
      '--port',
      String(agentPort),
      '--gateway-port',
      '0',
      '--leader-elect',
      '--leader-elect-lease-duration',
      '4s',
      '--leader-elect-renew-deadline',
      '3s',
      '--leader-elect-retry-period',
      '500ms',
    ],
    {
      KUBERNETES_SERVICE_HOST: server.hostname,
      KUBERNETES_SERVICE_PORT: server.port,
      SA_TOKEN: token,
      SA_CA: host.cluster.caPem,
      TOWER_HOME: '',
    },
    'unshare',
  );
  host.processes.push(proxy);
  await proxy.waitFor(
    /proxy serving .*store="clusters\.cluster\.kubesphere\.io at https:\/\/127\.0\.0\.1:\d+"/,
    60_000,
  );
  await host.applyCluster('omicron');
  const c = await host.waitCluster('omicron', 'initialized', initialized);
  host.startAgent('omicron', c.spec!.connection!.token!, agentPort, member);
  const up = await host.waitCluster('omicron', 'AgentAvailable', agentAvailable);
  const ns = await memberKubectl(up, ['get', 'namespaces', '-o', 'name']);
  assert.equal(ns.code, 0, ns.stderr);
  await host.must(['-n', 'kubesphere-system', 'delete', 'service', 'mc-omicron']);
  await waitUntil('mc-omicron to be recreated', () => host.getService('mc-omicron'));
  assert.doesNotMatch(proxy.output, /\b403\b|forbidden/i, 'nothing the proxy does is outside its RBAC');
});

test('store selection errors are one line with the fix', async () => {
  const noHost = await tower(['proxy', '--store', 'kubernetes']);
  assert.equal(noHost.code, 1);
  assert.match(noHost.stderr, /^tower proxy: --store kubernetes needs the host cluster: give --kubeconfig <path>/);
  const fileLeader = await tower(['proxy', '--leader-elect', '--port', '0', '--gateway-port', '0'], {
    TOWER_HOME: host.dir,
  });
  assert.equal(fileLeader.code, 1);
  assert.match(fileLeader.stderr, /--leader-elect needs Kubernetes mode/);
  const missingFile = await tower(['token', 'alpha', '--kubeconfig', '/nonexistent/host.kubeconfig']);
  assert.equal(missingFile.code, 1);
  assert.match(missingFile.stderr, /^tower token: host kubeconfig \/nonexistent\/host\.kubeconfig does not exist/);
  const badName = await host.tower(['token', '../x']);
  assert.equal(badName.code, 1);
  assert.match(badName.stderr, /invalid cluster name "\.\.\/x"/);
  // no namespace: the proxy says which and how to make it
  const bare = await startMemberCluster();
  try {
    const r = await tower([
      'proxy',
      '--kubeconfig',
      bare.kubeconfig,
      '--port',
      '0',
      '--gateway-port',
      '0',
      '--host',
      '127.0.0.1',
    ]);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /namespace kubesphere-system does not exist in the host cluster .*kubectl create namespace kubesphere-system/,
    );
  } finally {
    await bare.stop();
  }
});

/** The Cluster CRD with no schema to speak of and a status subresource. */
function looseCrd() {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: 'clusters.cluster.kubesphere.io' },
    spec: {
      group: 'cluster.kubesphere.io',
      names: { kind: 'Cluster', listKind: 'ClusterList', plural: 'clusters', singular: 'cluster' },
      scope: 'Cluster',
      versions: [
        {
          name: 'v1alpha1',
          served: true,
          storage: true,
          schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } },
          subresources: { status: {} },
        },
      ],
    },
  };
}
