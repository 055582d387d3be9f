// The addresses tower hands to members: a join command or an install that names a place the member
// cannot reach is said at once (a loopback proxy for an agent in a pod is refused), not found out later.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { removeDir, tempDir, tower } from './support/tower.ts';

const home = tempDir('addresses');
const env = { TOWER_HOME: home };
const FINGERPRINT = 'SHA256:' + 'A'.repeat(43);
const agent = (server: string) =>
  tower(['install', 'agent', '--name', 'alpha', '--token', 'a'.repeat(64), '--proxy-server', server], {
    TOWER_PROXY_FINGERPRINT: FINGERPRINT,
  });

after(() => removeDir(home));

test('tower token warns when its join command names a loopback proxy or a Service name, not otherwise', async () => {
  // no proxy has recorded an address on this data dir: the default is this machine's loopback
  const loopback = await tower(['token', 'alpha'], env);
  assert.equal(loopback.code, 0, loopback.stderr);
  assert.match(loopback.stdout, /--proxy-server http:\/\/127\.0\.0\.1:8080/);
  assert.match(
    loopback.stderr,
    /^warning: the join command names the proxy at http:\/\/127\.0\.0\.1:8080, a loopback/m,
  );
  assert.match(loopback.stderr, /--proxy-server .*--publish-service-address/);

  const service = await tower(['token', 'alpha', '--proxy-server', 'http://tower.kubesphere-system.svc:8080'], env);
  assert.equal(service.code, 0, service.stderr);
  assert.match(service.stderr, /^warning: .*tower\.kubesphere-system\.svc:8080, a Service name that only pods/m);

  const reachable = await tower(['token', 'alpha', '--proxy-server', 'http://tower.example.com:8080'], env);
  assert.equal(reachable.code, 0, reachable.stderr);
  assert.doesNotMatch(reachable.stderr, /warning/);
});

test('tower install agent refuses a loopback proxy (in a pod that is the pod), warns of a Service name', async () => {
  for (const server of ['http://127.0.0.1:8080', 'http://localhost:8080', 'https://[::1]:8443', '127.0.0.2:8080']) {
    const r = await agent(server);
    assert.equal(r.code, 1, `${server}: ${r.stdout}`);
    assert.equal(r.stdout, '', 'no manifests');
    assert.match(
      r.stderr,
      /^tower install: --proxy-server \S+ is a loopback address: in the agent's pod it is the pod itself\. Give/,
    );
    assert.equal(r.stderr.trim().split('\n').length, 1);
  }
  const service = await agent('http://tower.kubesphere-system.svc:8080');
  assert.equal(service.code, 0, service.stderr);
  assert.match(service.stdout, /kind: Deployment/);
  assert.match(
    service.stderr,
    /^warning: --proxy-server \S+ is a Service name: .*only when the member is that cluster/,
  );
  const reachable = await agent('http://tower.example.com:8080');
  assert.equal(reachable.code, 0, reachable.stderr);
  assert.equal(reachable.stderr, '');
});

test('tower install proxy warns while the address it publishes is one only its own cluster reaches', async () => {
  const internal = await tower(['install', 'proxy']);
  assert.equal(internal.code, 0, internal.stderr);
  assert.match(internal.stderr, /^warning: --publish-service-address tower\.kubesphere-system\.svc is what the proxy/m);
  const published = await tower(['install', 'proxy', '--publish-service-address', 'tower.example.com']);
  assert.equal(published.code, 0, published.stderr);
  assert.equal(published.stderr, '');
});
