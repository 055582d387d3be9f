// Every replica serves: proxies in Kubernetes mode on 127.0.0.2-5 (same ports), behind Debian's
// haproxy standing in for the Services (round robin, health-checked on /readyz), with tower agents,
// a Go v1 agent, a client load and a watch that must lose nothing while replicas die and roll.
import assert from 'node:assert/strict';
import { Agent as HttpsAgent, request as httpsRequest, type RequestOptions } from 'node:https';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { once } from 'node:events';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { goPeerBinary, startGoPeer } from './support/go-peer.ts';
import { Haproxy } from './support/haproxy.ts';
import {
  condition,
  fastReplicaFlags,
  KubeHost,
  kubeconfigOf,
  replicaLease,
  type ClusterResource,
} from './support/kube.ts';
import { CertificateAuthority } from '../src/pki/ca.ts';
import { PEER_URI_PREFIX, PeerSignature } from '../src/proxy/peer-protocol.ts';
import { kubectl } from './support/stack.ts';
import { freePort, TowerProcess, waitUntil } from './support/tower.ts';

const ADDRESS: Record<string, string> = { r1: '127.0.0.2', r2: '127.0.0.3', r3: '127.0.0.4', r4: '127.0.0.5' };
const TIMES = [...fastReplicaFlags(), '--shutdown-delay', '1s', '--shutdown-grace', '10s'];
const CLUSTERS = ['ha1', 'ha2'];
const WATCHED = 'ha-watch';

let host: KubeHost;
let member: MemberCluster;
let agentPort = 0;
let gatewayPort = 0;
let haproxy: Haproxy;
const replicas = new Map<string, TowerProcess>();
const resources = new Map<string, ClusterResource>();
let load: Load;
let reflector: Reflector;
let writer: Writer;

before(async () => {
  [host, member] = await Promise.all([KubeHost.start(), startMemberCluster()]);
  [agentPort, gatewayPort] = await Promise.all([freePort(), freePort()]);
  await Promise.all(['r1', 'r2', 'r3'].map((id) => startReplica(id)));
  for (const name of [...CLUSTERS, 'hago']) await host.applyCluster(name);
  for (const name of [...CLUSTERS, 'hago']) {
    resources.set(
      name,
      await host.waitCluster(
        name,
        'initialized',
        (c) => condition(c, 'Initialized')?.status === 'True' && Boolean(c.spec?.connection?.token),
        60_000,
      ),
    );
  }
  const port = resources.get('ha1')!.spec!.connection!.kubernetesAPIServerPort!;
  haproxy = await Haproxy.start(
    Object.entries(ADDRESS).map(([name, address]) => ({ name, address })),
    [
      { name: 'agents', port: agentPort, checkPort: agentPort },
      { name: 'ha1', port, checkPort: agentPort },
    ],
  );
  await kubectl(member.kubeconfig, ['create', 'namespace', WATCHED]);
});

after(async () => {
  load?.stop();
  reflector?.stop();
  writer?.stop();
  await haproxy?.stop();
  await Promise.all([host?.close(), member?.stop()]);
});

async function startReplica(id: string): Promise<TowerProcess> {
  const p = new TowerProcess(
    `proxy ${id}`,
    [
      'proxy',
      '--kubeconfig',
      host.kubeconfig,
      '--host',
      ADDRESS[id]!,
      '--port',
      String(agentPort),
      '--gateway-port',
      String(gatewayPort),
      '--server-id',
      id,
      ...TIMES,
    ],
    { TOWER_HOME: host.dir },
  );
  host.processes.push(p);
  replicas.set(id, p);
  await p.waitFor(/proxy serving/, 60_000);
  return p;
}

async function metrics(id: string): Promise<string> {
  return (await fetch(`http://${ADDRESS[id]}:${agentPort}/metrics`)).text();
}

/** agent sessions of `cluster` on replica `id`, as its /metrics says */
async function sessions(id: string, cluster: string): Promise<number> {
  const m = new RegExp(`^tower_proxy_agents_connected\\{cluster="${cluster}"\\} (\\d+)$`, 'm').exec(await metrics(id));
  return m ? Number(m[1]) : 0;
}

/** Waits until each of `ids` holds exactly one session of each cluster; returns how long that took. */
async function everyReplicaHeld(ids: string[], clusters = CLUSTERS, timeoutMs = 15_000): Promise<number> {
  const t0 = Date.now();
  await waitUntil(
    () => `one session per replica (${ids.join(',')}) and cluster (${clusters.join(',')})`,
    async () => {
      for (const id of ids) for (const c of clusters) if ((await sessions(id, c)) !== 1) return false;
      return true;
    },
    timeoutMs,
    200,
  );
  return Date.now() - t0;
}

function startAgent(name: string): TowerProcess {
  const c = resources.get(name)!;
  const p = new TowerProcess(
    `agent ${name}`,
    [
      'agent',
      '--name',
      name,
      '--token',
      c.spec!.connection!.token!,
      '--proxy-server',
      `http://127.0.0.1:${haproxy.frontends.get('agents')}`,
      '--kubeconfig',
      member.kubeconfig,
      '--max-retry-interval',
      '1s',
      '--proxy-fingerprint',
      host.fingerprint,
    ],
    {},
  );
  host.processes.push(p);
  return p;
}

/** TLS material of a Cluster's kubeconfig (kubernetes-admin, system:masters) */
function clientOf(c: ClusterResource): { ca: string; cert: string; key: string } {
  const kc = parseYaml(kubeconfigOf(c)) as {
    clusters: { cluster: Record<string, string> }[];
    users: { user: Record<string, string> }[];
  };
  const b64 = (s: string | undefined) => Buffer.from(s ?? '', 'base64').toString('utf8');
  return {
    ca: b64(kc.clusters[0]!.cluster['certificate-authority-data']),
    cert: b64(kc.users[0]!.user['client-certificate-data']),
    key: b64(kc.users[0]!.user['client-key-data']),
  };
}

/** kubectl with a Cluster's kubeconfig against `server` (a replica's own address, or haproxy's) */
function clusterKubectl(c: ClusterResource, server: string, args: string[]) {
  const path = join(host.dir, `${c.metadata.name}-${Date.now()}-${Math.random()}.kubeconfig`);
  return import('node:fs').then(({ writeFileSync }) => {
    writeFileSync(path, kubeconfigOf(c), { mode: 0o600 });
    return kubectl(path, ['--server', server, ...args]);
  });
}

interface Outcome {
  start: number;
  end: number;
  ok: boolean;
  err?: string;
  retried: boolean;
}

/**
 * GETs through haproxy in a loop, on kept-alive connections, as client-go does: a request that
 * fails on a reused connection before any answer (the server closed it meanwhile) is sent once more.
 */
class Load {
  readonly outcomes: Outcome[] = [];
  #stopped = false;
  #agent: HttpsAgent;
  #port: number;
  readonly done: Promise<void>;

  constructor(port: number, tls: { ca: string; cert: string; key: string }, concurrency = 4) {
    this.#port = port;
    this.#agent = new HttpsAgent({ keepAlive: true, maxSockets: concurrency, ...tls });
    this.done = Promise.all(Array.from({ length: concurrency }, () => this.#loop())).then(() => undefined);
  }

  stop(): void {
    this.#stopped = true;
    this.#agent.destroy();
  }

  /** outcomes of requests started in [from, to) */
  between(from: number, to = Infinity): Outcome[] {
    return this.outcomes.filter((o) => o.start >= from && o.start < to);
  }

  async #loop(): Promise<void> {
    // bounded: at most ten minutes of requests
    const deadline = Date.now() + 600_000;
    while (!this.#stopped && Date.now() < deadline) {
      const start = Date.now();
      let retried = false;
      let r = await this.#get();
      if (r.retry) {
        retried = true;
        r = await this.#get();
      }
      if (this.#stopped) return;
      this.outcomes.push({ start, end: Date.now(), ok: r.ok, err: r.err, retried });
      await new Promise((res) => setTimeout(res, 10));
    }
  }

  #get(): Promise<{ ok: boolean; err?: string; retry?: boolean }> {
    return new Promise((resolve) => {
      const opts: RequestOptions = {
        host: '127.0.0.1',
        port: this.#port,
        path: '/api/v1/namespaces/default/configmaps?limit=1',
        agent: this.#agent,
        timeout: 20_000,
      };
      const req = httpsRequest(opts, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => {
          body += d;
        });
        res.on('end', () =>
          resolve(
            res.statusCode === 200 && body.includes('"ConfigMapList"')
              ? { ok: true }
              : { ok: false, err: `${res.statusCode} ${body.slice(0, 300)}` },
          ),
        );
        res.on('error', (err) => resolve({ ok: false, err: `response: ${err.message}` }));
      });
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (err: NodeJS.ErrnoException) =>
        resolve({
          ok: false,
          err: `${err.code ?? ''} ${err.message}`,
          retry: req.reusedSocket && ['ECONNRESET', 'EPIPE'].includes(err.code ?? ''),
        }),
      );
      req.end();
    });
  }
}

/**
 * A reflector, as client-go's informers are: list, then watch from the list's resourceVersion;
 * a watch that ends cleanly is resumed from the last event's resourceVersion, one that is cut is
 * counted (and resumed the same way).
 */
class Reflector {
  readonly seen = new Set<string>();
  cleanEnds = 0;
  cuts: string[] = [];
  errors: string[] = [];
  #rv = '';
  #stopped = false;
  #agent: HttpsAgent;
  #port: number;
  #current: IncomingMessage | undefined;

  constructor(port: number, tls: { ca: string; cert: string; key: string }) {
    this.#port = port;
    this.#agent = new HttpsAgent({ keepAlive: false, ...tls });
  }

  stop(): void {
    this.#stopped = true;
    this.#current?.destroy();
  }

  async start(): Promise<void> {
    const list = JSON.parse(await this.#text(`/api/v1/namespaces/${WATCHED}/configmaps`)) as {
      metadata: { resourceVersion: string };
      items: { metadata: { name: string } }[];
    };
    for (const i of list.items) this.seen.add(i.metadata.name);
    this.#rv = list.metadata.resourceVersion;
    void this.#watchLoop();
  }

  async #watchLoop(): Promise<void> {
    const deadline = Date.now() + 600_000;
    while (!this.#stopped && Date.now() < deadline) {
      const how = await this.#watchOnce();
      if (this.#stopped) return;
      if (how === 'clean') this.cleanEnds++;
      else this.cuts.push(how);
      await new Promise((r) => setTimeout(r, how === 'clean' ? 0 : 100));
    }
  }

  #watchOnce(): Promise<string> {
    return new Promise((resolve) => {
      const path =
        `/api/v1/namespaces/${WATCHED}/configmaps?watch=1&allowWatchBookmarks=true&resourceVersion=` +
        `${this.#rv}&timeoutSeconds=600`;
      const req = httpsRequest({ host: '127.0.0.1', port: this.#port, path, agent: this.#agent }, (res) => {
        this.#current = res;
        if (res.statusCode !== 200) {
          res.resume();
          resolve(`status ${res.statusCode}`);
          return;
        }
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          buf += d;
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const ev = JSON.parse(buf.slice(0, nl)) as {
              type: string;
              object: { metadata?: { name?: string; resourceVersion?: string }; code?: number };
            };
            buf = buf.slice(nl + 1);
            if (ev.type === 'ERROR') {
              this.errors.push(JSON.stringify(ev.object));
              continue;
            }
            if (ev.object.metadata?.resourceVersion) this.#rv = ev.object.metadata.resourceVersion;
            if (ev.type === 'ADDED' && ev.object.metadata?.name) this.seen.add(ev.object.metadata.name);
          }
        });
        res.on('end', () => resolve(buf === '' ? 'clean' : `ended mid-event: ${buf.slice(0, 100)}`));
        res.on('error', (err) => resolve(`cut: ${err.message}`));
        res.on('aborted', () => resolve('cut: aborted'));
      });
      req.on('error', (err) => resolve(`request: ${err.message}`));
      req.end();
    });
  }

  #text(path: string): Promise<string> {
    return new Promise((resolve, reject) => {
      httpsRequest({ host: '127.0.0.1', port: this.#port, path, agent: this.#agent }, (res) => {
        let body = '';
        res
          .setEncoding('utf8')
          .on('data', (d: string) => {
            body += d;
          })
          .on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${res.statusCode} ${body}`))));
      })
        .on('error', reject)
        .end();
    });
  }
}

/** Creates ConfigMaps in the member, directly (not through tower), one every 250 ms. */
class Writer {
  readonly created: string[] = [];
  #stopped = false;
  readonly done: Promise<void>;
  constructor() {
    this.done = (async () => {
      for (let i = 0; i < 2400 && !this.#stopped; i++) {
        const name = `cm-${i}`;
        const r = await kubectl(member.kubeconfig, ['-n', WATCHED, 'create', 'configmap', name]);
        if (r.code === 0) this.created.push(name);
        await new Promise((res) => setTimeout(res, 250));
      }
    })();
  }
  stop(): void {
    this.#stopped = true;
  }
}

test(
  'two tower agents each hold a session to all three replicas within 15 s; ' + 'kubectl works through every replica',
  async () => {
    const t0 = Date.now();
    for (const name of CLUSTERS) startAgent(name);
    await everyReplicaHeld(['r1', 'r2', 'r3']);
    console.log(`# every agent held three sessions ${Date.now() - t0} ms after starting`);
    const up = await host.waitCluster(
      'ha1',
      'AgentAvailable',
      (c) => condition(c, 'AgentAvailable')?.status === 'True' && Boolean(c.spec?.connection?.kubeconfig),
    );
    resources.set('ha1', up);
    const port = up.spec!.connection!.kubernetesAPIServerPort!;
    for (const id of ['r1', 'r2', 'r3']) {
      const r = await clusterKubectl(up, `https://${ADDRESS[id]}:${port}`, ['get', 'namespaces', '-o', 'name']);
      assert.equal(r.code, 0, `through ${id}: ${r.stderr}`);
      assert.match(r.stdout, /namespace\/kube-system/);
    }
    // no duplicates kept: exactly one session per replica and agent (checked above), and the agents said so
    for (const p of host.processes.filter((x) => x.name.startsWith('agent ')))
      assert.match(p.output, /proxy replicas replicas=r1,r2,r3/);
    // an agent names the replicas it holds when it dials: one of them answers 409 at once, no WebSocket, no SSH
    const held = await new Promise<IncomingMessage>((resolve, reject) => {
      httpRequest({
        host: ADDRESS.r2,
        port: agentPort,
        headers: {
          connection: 'Upgrade',
          upgrade: 'websocket',
          'sec-websocket-version': '13',
          'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
          'sec-websocket-protocol': 'kubesphere-v1',
          'x-tower-held': 'r1,r2',
        },
      })
        .on('response', resolve)
        .on('upgrade', () => reject(new Error('upgraded')))
        .on('error', reject)
        .end();
    });
    held.resume();
    assert.equal(held.statusCode, 409);
    assert.equal(held.headers['x-tower-server-id'], 'r2');

    const tls = clientOf(up);
    const front = haproxy.frontends.get('ha1')!;
    load = new Load(front, tls);
    reflector = new Reflector(front, tls);
    await reflector.start();
    writer = new Writer();
    await waitUntil('the load to run', () => load.outcomes.filter((o) => o.ok).length > 20);
  },
);

test('(a) a replica killed with SIGKILL: every request started after haproxy marks it down succeeds', async () => {
  const killed = Date.now();
  await replicas.get('r2')!.stop('SIGKILL');
  const down = await haproxy.waitState('r2', 'DOWN');
  await new Promise((r) => setTimeout(r, 4000));
  const after = load.between(down);
  const failed = after.filter((o) => !o.ok);
  console.log(
    `# (a) down ${down - killed} ms after the kill; ${after.length} requests after, ` +
      `${failed.length} failed, ${after.filter((o) => o.retried).length} resent on a new connection; ` +
      `${load.between(killed, down).filter((o) => !o.ok).length} failed before`,
  );
  assert.ok(after.length > 50, `only ${after.length} requests after the markdown`);
  assert.deepEqual(failed, [], 'requests started after haproxy marked r2 down');
  // r2 comes back: the agents hold three sessions again
  await startReplica('r2');
  await haproxy.waitState('r2', 'UP');
  await everyReplicaHeld(['r1', 'r2', 'r3'], CLUSTERS, 30_000);
});

test(
  '(b) all three restarted one by one with SIGTERM (a rolling update): ' +
    'zero failed requests, the watch resumes without losing an event, AgentAvailable stays True',
  async () => {
    const from = Date.now();
    const cutsBefore = reflector.cuts.length;
    const endsBefore = reflector.cleanEnds;
    const flips: string[] = [];
    let watching = true;
    const conditions = (async () => {
      while (watching) {
        const c = await host.get('ha1');
        const s = condition(c, 'AgentAvailable')?.status;
        if (s !== 'True') flips.push(`${new Date().toISOString()} ${s}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    })();
    const transition = condition(await host.get('ha1'), 'AgentAvailable')?.lastTransitionTime;
    for (const id of ['r1', 'r2', 'r3']) {
      const p = replicas.get(id)!;
      const mark = p.output.length;
      assert.equal(await p.stop('SIGTERM'), 0, p.output.slice(mark));
      assert.match(p.output.slice(mark), /drained /);
      await startReplica(id);
      await haproxy.waitState(id, 'UP');
      await everyReplicaHeld(['r1', 'r2', 'r3'], CLUSTERS, 30_000);
    }
    // the events created during the roll reach the watch, which goes on
    const last = writer.created.at(-1)!;
    await waitUntil(`the watch to see ${last}`, () => reflector.seen.has(last), 20_000);
    watching = false;
    await conditions;
    const during = load.between(from);
    const failed = during.filter((o) => !o.ok);
    console.log(
      `# (b) ${during.length} requests during the roll, ${failed.length} failed, ` +
        `${during.filter((o) => o.retried).length} resent on a new connection; ` +
        `watch handed back ${reflector.cleanEnds - endsBefore} times`,
    );
    assert.deepEqual(failed, [], 'requests during the rolling update');
    assert.deepEqual(reflector.cuts.slice(cutsBefore), [], 'the watch ended only between events');
    assert.ok(reflector.cleanEnds > endsBefore, 'the watch was handed back at least once');
    assert.deepEqual(reflector.errors, []);
    const missing = writer.created.filter((n) => !reflector.seen.has(n));
    assert.deepEqual(missing, [], 'ConfigMaps the watch never saw');
    assert.deepEqual(flips, [], 'AgentAvailable left True');
    assert.equal(
      condition(await host.get('ha1'), 'AgentAvailable')?.lastTransitionTime,
      transition,
      'AgentAvailable did not transition',
    );
  },
);

test('(c) a fourth replica is added: the agents hold four sessions within 15 s', async () => {
  await startReplica('r4');
  const took = await everyReplicaHeld(['r1', 'r2', 'r3', 'r4']);
  console.log(`# (c) four sessions each ${took} ms after r4 served`);
  const recent = load.between(Date.now() - 5000);
  assert.deepEqual(
    recent.filter((o) => !o.ok),
    [],
  );
});

test(
  'a host API outage longer than a Lease lasts: ' + 'no replica counts the others gone, the agents keep every session',
  async () => {
    const agents = host.processes.filter((x) => x.name.startsWith('agent ') && x.running);
    const marks = agents.map((a) => a.output.length);
    await host.cluster.killApiserver();
    await new Promise((r) => setTimeout(r, 9000));
    for (const id of ['r1', 'r2', 'r3', 'r4'])
      assert.match(await metrics(id), /^tower_proxy_replicas 4$/m, `${id} still counts four replicas`);
    const during = load.between(Date.now() - 5000);
    assert.ok(during.length > 20);
    assert.deepEqual(
      during.filter((o) => !o.ok),
      [],
      'requests during the outage',
    );
    await host.cluster.startApiserver();
    await replicas.get('r1')!.waitFor(/the host API answers again/, 30_000);
    await new Promise((r) => setTimeout(r, 3000));
    await everyReplicaHeld(['r1', 'r2', 'r3', 'r4'], CLUSTERS, 1000);
    agents.forEach((a, i) =>
      assert.doesNotMatch(
        a.output.slice(marks[i]),
        /closing the session to a replica that is no longer live|disconnected from proxy/,
      ),
    );
  },
);

test('a Go v1 agent connected to one replica: requests through the others are forwarded to it', async () => {
  const c = resources.get('hago')!;
  const pki = join(member.dir, 'pki');
  const go = startGoPeer(await goPeerBinary(), [
    'agent',
    '-proxy-server',
    `ws://${ADDRESS.r1}:${agentPort}`,
    '-name',
    'hago',
    '-token',
    c.spec!.connection!.token!,
    '-upstream',
    new URL(member.server).host,
    '-ca',
    join(pki, 'ca.crt'),
    '-cert',
    join(pki, 'admin.crt'),
    '-key',
    join(pki, 'admin.key'),
  ]);
  host.processes.push(go);
  await go.waitFor(/^connected$/m);
  await waitUntil('r1 to count the Go agent', async () => (await sessions('r1', 'hago')) === 1);
  // the replica that writes learns of an agent on another one, and the condition holds it
  const up = await host.waitCluster(
    'hago',
    'AgentAvailable',
    (x) => condition(x, 'AgentAvailable')?.status === 'True' && Boolean(x.spec?.connection?.kubeconfig),
  );
  const port = up.spec!.connection!.kubernetesAPIServerPort!;
  for (const id of ['r2', 'r3']) {
    assert.equal(await sessions(id, 'hago'), 0, `${id} holds no session of hago`);
    const r = await clusterKubectl(up, `https://${ADDRESS[id]}:${port}`, ['get', 'namespaces', '-o', 'name']);
    assert.equal(r.code, 0, `through ${id}: ${r.stderr}`);
    assert.match(r.stdout, /namespace\/kube-system/);
    // /metrics is rendered at most once a second
    await waitUntil(
      `${id} to count its forwards to r1`,
      async () => /^tower_proxy_peer_forwards_total\{replica="r1"\} [1-9]/m.test(await metrics(id)),
      5000,
    );
  }
  // through the shared gateway too, with a kubeconfig of tower's
  const gw = await host.tower([
    'kubeconfig',
    'hago',
    '--gateway',
    '--server',
    `https://${ADDRESS.r3}:${gatewayPort}/clusters/hago`,
  ]);
  assert.equal(gw.code, 0, gw.stderr);
  const path = join(host.dir, 'hago-gateway.kubeconfig');
  (await import('node:fs')).writeFileSync(path, gw.stdout, { mode: 0o600 });
  const r = await kubectl(path, ['get', 'namespaces', '-o', 'name']);
  assert.equal(r.code, 0, r.stderr);
  // once it is gone, no replica has one: a Status 503 naming the cluster, from any replica (not a discovery
  // path, whose answer is text: operable.test.ts)
  await go.stop('SIGKILL');
  await waitUntil('r1 to drop the Go agent', async () => (await sessions('r1', 'hago')) === 0);
  const gone = await clusterKubectl(up, `https://${ADDRESS.r2}:${port}`, ['get', '--raw', '/api/v1/namespaces']);
  assert.notEqual(gone.code, 0);
  assert.match(gone.stderr, /cluster "hago" has no agent connected to tower/);
});

test("Leases that are not a live replica's are ignored, and expired ones removed", async () => {
  const lease = (name: string, holder: string, renewed: Date) =>
    replicaLease(name, holder, renewed, { address: 'evil.example:1' });
  await host.must(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'List',
      items: [
        lease('tower-proxy-x', '../x', new Date()),
        lease('tower-proxy-ghost', 'ghost', new Date('2020-01-01T00:00:00Z')),
        lease('tower-proxy-other', 'someone-else', new Date()),
      ],
    }),
  );
  await new Promise((r) => setTimeout(r, 2500));
  for (const id of ['r1', 'r2', 'r3', 'r4'])
    assert.match(await metrics(id), /^tower_proxy_replicas 4$/m, `${id} counts only the live replicas`);
  await waitUntil(
    'the expired Leases to be removed',
    async () =>
      !/tower-proxy-(x|ghost|other)\b/.test(
        await host.must(['-n', 'kubesphere-system', 'get', 'leases', '-o', 'name']),
      ),
    30_000,
    500,
  );
  for (const p of host.processes.filter((x) => x.name.startsWith('agent ')))
    assert.doesNotMatch(p.output, /ghost|someone-else|\.\.\/x/);
});

test("a stranger with a certificate that is not a replica's cannot use the peer API or pose as a replica", async () => {
  const issued = await host.tower([
    'kubeconfig',
    'ha1',
    '--gateway',
    '--user',
    'nobody',
    '--group',
    'viewers',
    '--server',
    `https://${ADDRESS.r1}:${gatewayPort}/clusters/ha1`,
  ]);
  assert.equal(issued.code, 0, issued.stderr);
  const kc = parseYaml(issued.stdout) as {
    clusters: { cluster: Record<string, string> }[];
    users: { user: Record<string, string> }[];
  };
  const b64 = (s: string | undefined) => Buffer.from(s ?? '', 'base64').toString('utf8');
  const tls = {
    ca: b64(kc.clusters[0]!.cluster['certificate-authority-data']),
    cert: b64(kc.users[0]!.user['client-certificate-data']),
    key: b64(kc.users[0]!.user['client-key-data']),
  };
  const get = (path: string, headers: Record<string, string> = {}) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      httpsRequest({ host: ADDRESS.r1, port: gatewayPort, path, headers, ...tls }, (res) => {
        let body = '';
        res
          .setEncoding('utf8')
          .on('data', (d: string) => {
            body += d;
          })
          .on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
        .on('error', reject)
        .end();
    });
  const api = await get('/peer/v1/sessions?cluster=ha1');
  assert.equal(api.status, 403);
  assert.match(api.body, /for other replicas/);
  // peer headers from a client are not a replica's word: dropped, the request acts as the client's certificate
  const posing = await get('/clusters/ha1/api/v1/namespaces', {
    'x-tower-peer-cluster': 'ha2',
    'x-tower-peer-target': 'kubernetes',
    'x-tower-peer-identity': Buffer.from('{"user":"admin","groups":["system:masters"]}').toString('base64'),
  });
  assert.equal(posing.status, 403, posing.body);
  assert.match(posing.body, /User \\?"nobody\\?" cannot list resource \\?"namespaces\\?"/);
  for (const p of replicas.values()) assert.ok(p.running);
});

test(
  "identity between replicas is bound to each request: a replica's certificate alone, " +
    'a forged or replayed signature, or a second request before the first answer is refused',
  async () => {
    // a connection that is a replica's as far as TLS goes (what a request smuggled onto one rides on), without the
    // signing key
    const secret = JSON.parse(
      await host.must(['-n', 'kubesphere-system', 'get', 'secret', 'tower-ca', '-o', 'json']),
    ) as { data: Record<string, string> };
    const pem = (k: string) => Buffer.from(secret.data[k]!, 'base64').toString('utf8');
    const ca = await CertificateAuthority.load({ cert: pem('ca.crt'), key: pem('ca.key') }, 'test');
    const peerCert = await ca.issueClient('tower-replica:intruder', [], 1, undefined, [`${PEER_URI_PREFIX}intruder`]);
    const tls = { ca: ca.certPem, ...peerCert };
    const path = '/api/v1/namespaces';
    const masters = Buffer.from('{"user":"admin","groups":["system:masters"]}').toString('base64');
    const posing = (extra: Record<string, string>) => ({
      'x-tower-peer-cluster': 'ha1',
      'x-tower-peer-target': 'kubernetes',
      'x-tower-peer-identity': masters,
      ...extra,
    });
    const post = (headers: Record<string, string>, body: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        httpsRequest(
          {
            host: ADDRESS.r1,
            port: gatewayPort,
            path,
            method: 'POST',
            headers: { 'content-type': 'application/json', ...headers },
            ...tls,
            agent: false,
          },
          (res) => {
            let text = '';
            res
              .setEncoding('utf8')
              .on('data', (d: string) => {
                text += d;
              })
              .on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
          },
        )
          .on('error', reject)
          .end(body);
      });
    const namespace = (name: string) => JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
    const signer = new PeerSignature(ca.secret('peer-request-signature'));
    const otherKey = new PeerSignature(Buffer.alloc(32, 7));
    const signed = (s: PeerSignature, p: string, at?: number) =>
      s.sign({ method: 'POST', path: p, cluster: 'ha1', target: 'kubernetes', identity: masters }, at);
    const attempts: [string, Record<string, string>][] = [
      ['no signature', {}],
      ['a signature made with another key', { 'x-tower-peer-signature': signed(otherKey, path) }],
      [
        'a signature of another request (replayed onto this one)',
        { 'x-tower-peer-signature': signed(signer, '/api/v1/namespaces/default/pods') },
      ],
      [
        'a signature of another identity',
        {
          'x-tower-peer-signature': signed(signer, path),
          'x-tower-peer-identity': Buffer.from('{"user":"admin2","groups":["system:masters"]}').toString('base64'),
        },
      ],
      ['a signature ten minutes old', { 'x-tower-peer-signature': signed(signer, path, Date.now() - 600_000) }],
    ];
    for (const [what, headers] of attempts) {
      const name = `peer-forged-${attempts.findIndex((a) => a[0] === what)}`;
      const r = await post(posing(headers), namespace(name));
      assert.equal(r.status, 403, `${what}: ${r.body}`);
      assert.equal(
        (await kubectl(member.kubeconfig, ['get', 'namespace', name])).code,
        1,
        `${what}: the namespace was not created in the member`,
      );
    }
    // the control: the same request signed with the replicas' key is a replica's word, and the member acts on it
    const honest = await post(posing({ 'x-tower-peer-signature': signed(signer, path) }), namespace('peer-signed'));
    assert.equal(honest.status, 201, honest.body);
    await kubectl(member.kubeconfig, ['delete', 'namespace', 'peer-signed', '--wait=false']);

    // two signed requests in one write: the second arrives before the first answer, and is not forwarded
    const head = (name: string, sig: string) => {
      const body = namespace(name);
      return (
        `POST ${path} HTTP/1.1\r\nHost: ${ADDRESS.r1}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nx-tower-peer-cluster: ha1\r\n` +
        `x-tower-peer-target: kubernetes\r\nx-tower-peer-identity: ${masters}\r\n` +
        `x-tower-peer-signature: ${sig}\r\n\r\n${body}`
      );
    };
    const socket = tlsConnect({ host: ADDRESS.r1, port: gatewayPort, ...tls, servername: undefined });
    await once(socket, 'secureConnect');
    let answer = '';
    socket.setEncoding('utf8').on('data', (d: string) => {
      answer += d;
    });
    socket.write(head('peer-piped-1', signed(signer, path)) + head('peer-piped-2', signed(signer, path)));
    await Promise.race([once(socket, 'close'), new Promise((r) => setTimeout(r, 15_000))]);
    assert.ok(socket.destroyed, 'the replica connection was closed');
    assert.equal(
      (await kubectl(member.kubeconfig, ['get', 'namespace', 'peer-piped-2'])).code,
      1,
      'the second request never reached the member',
    );
    assert.doesNotMatch(answer, /peer-piped-2/);
    await kubectl(member.kubeconfig, ['delete', 'namespace', 'peer-piped-1', '--wait=false']);
    assert.match(
      replicas.get('r1')!.output,
      /closed a replica connection that sent a request before the previous answer ended/,
    );
    for (const p of replicas.values()) assert.ok(p.running);
  },
);

test('the replicas stop cleanly: each withdraws its Lease', async () => {
  load.stop();
  reflector.stop();
  writer.stop();
  await Promise.all([...replicas.values()].map((p) => p.stop('SIGTERM')));
  const leases = await host.must(['-n', 'kubesphere-system', 'get', 'leases', '-o', 'name']);
  assert.doesNotMatch(leases, /tower-proxy-/);
});
