// Every request traceable: tower gives each request through the gateway an Audit-ID of its own, sends it to the
// member, returns it to the client and writes it in its access log. A member kube-apiserver with an audit policy then
// holds an event under the same ID, as the impersonated user and acted by the agent's identity, so that tower's
// access log and the member's audit log join by ID. Two replicas, the agent on r1 only: a request that enters r2 is
// forwarded to r1 and keeps r2's ID, in both access logs and at the member. A client's own Audit-ID never travels.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { condition, fastReplicaFlags, KubeHost } from './support/kube.ts';
import { kubectl, writeTokenKubeconfig } from './support/stack.ts';
import { freePort, tower, TowerProcess, waitUntil } from './support/tower.ts';

// loopback addresses of their own, so that the cluster ports (the same number on every replica) meet no other test's
const ADDRESS = { r1: '127.0.21.1', r2: '127.0.21.2' } as const;
type ReplicaId = keyof typeof ADDRESS;
const REPLICAS: ReplicaId[] = ['r1', 'r2'];
const CLUSTER = 'traced';
const AGENT_USER = 'system:serviceaccount:kubesphere-system:tower-agent';
const CLIENT_AUDIT_ID = 'chosen-by-client';
/** a client's try at the header replicas hand the ID on in: it must not pass either */
const CLIENT_PEER_AUDIT_ID = '00000000-0000-4000-8000-00000000c11e';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const REQUEST_TIMEOUT_MS = 20_000;
const AUDIT_WAIT_MS = 20_000;

/** One line of tower's --access-log (--log-format json). */
interface AccessLine {
  msg: string;
  auditId: string;
  cluster?: string;
  user?: string;
  groups?: string;
  as?: string;
  verb: string;
  resource?: string;
  namespace?: string;
  path: string;
  status: number;
  fromReplica?: string;
}

/** One event of the member's audit log. */
interface AuditEvent {
  auditID: string;
  verb: string;
  requestURI: string;
  user: { username: string; groups?: string[] };
  impersonatedUser?: { username: string; groups?: string[] };
  objectRef?: { resource?: string; subresource?: string; namespace?: string };
  responseStatus?: { code: number };
}

let host: KubeHost;
let member: MemberCluster;
let agent: TowerProcess;
const replicas = new Map<ReplicaId, TowerProcess>();
/** jane (group viewers) through each replica's gateway: a kubeconfig, and its TLS material for raw requests */
const jane = new Map<ReplicaId, { kubeconfig: string; tls: { ca: string; cert: string; key: string } }>();
let gatewayPort = 0;

before(async () => {
  [host, member] = await Promise.all([KubeHost.start(), startMemberCluster({ audit: true })]);
  // the agent's ServiceAccount with the RBAC `tower install agent` grants (impersonation, SubjectAccessReviews)
  const manifests = await tower([
    'install',
    'agent',
    '--with-namespace',
    '--name',
    CLUSTER,
    '--token',
    'a'.repeat(64),
    '--proxy-server',
    'http://tower.example:8080',
    '--proxy-fingerprint',
    `SHA256:${'A'.repeat(43)}`,
  ]);
  assert.equal(manifests.code, 0, manifests.stderr);
  await must(member.kubeconfig, ['apply', '-f', '-'], manifests.stdout);
  const saToken = (
    await must(member.kubeconfig, ['-n', 'kubesphere-system', 'create', 'token', 'tower-agent', '--duration', '1h'])
  ).trim();
  const agentKubeconfig = writeTokenKubeconfig(
    join(host.dir, 'agent.kubeconfig'),
    member.server,
    member.caPem,
    saToken,
  );
  // jane may read pods and configmaps and create configmaps in default; not create namespaces, nor exec
  await must(member.kubeconfig, [
    'create',
    'clusterrole',
    'viewer',
    '--verb=get,list,watch',
    '--resource=pods,configmaps',
  ]);
  await must(member.kubeconfig, ['create', 'clusterrolebinding', 'viewers', '--clusterrole=viewer', '--group=viewers']);
  await must(member.kubeconfig, [
    '-n',
    'default',
    'create',
    'role',
    'cm-writer',
    '--verb=create',
    '--resource=configmaps',
  ]);
  await must(member.kubeconfig, [
    '-n',
    'default',
    'create',
    'rolebinding',
    'jane-cm',
    '--role=cm-writer',
    '--user=jane',
  ]);

  // a pod on no real node, for an exec the member refuses (no controller-manager makes its ServiceAccount)
  await must(member.kubeconfig, ['-n', 'default', 'create', 'serviceaccount', 'default']);
  await must(
    member.kubeconfig,
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'target', namespace: 'default' },
      spec: { nodeName: 'nowhere', automountServiceAccountToken: false, containers: [{ name: 'c', image: 'busybox' }] },
    }),
  );

  let agentPort: number;
  [agentPort, gatewayPort] = await Promise.all([freePort(), freePort()]);
  for (const id of REPLICAS) {
    const p = new TowerProcess(
      `proxy ${id}`,
      [
        'proxy',
        '--kubeconfig',
        host.kubeconfig,
        '--host',
        ADDRESS[id],
        '--port',
        String(agentPort),
        '--gateway-port',
        String(gatewayPort),
        '--server-id',
        id,
        '--access-log',
        '--log-format',
        'json',
        ...fastReplicaFlags(),
        '--shutdown-delay',
        '0s',
        '--shutdown-grace',
        '5s',
      ],
      { TOWER_HOME: host.dir },
    );
    host.processes.push(p);
    replicas.set(id, p);
    // one after the other: the first creates tower's CA and host key in the host cluster, the second loads them
    await p.waitFor(/proxy serving/, 60_000);
  }
  await host.applyCluster(CLUSTER);
  const c = await host.waitCluster(
    CLUSTER,
    'initialized',
    (x) => condition(x, 'Initialized')?.status === 'True' && Boolean(x.spec?.connection?.token),
    60_000,
  );
  // r2 forwards only to a replica it counts live (from its Lease)
  await waitUntil(
    'both replicas to count two replicas',
    async () => {
      for (const id of REPLICAS) {
        const m = await (await fetch(`http://${ADDRESS[id]}:${agentPort}/metrics`)).text();
        if (!/^tower_proxy_replicas 2$/m.test(m)) return false;
      }
      return true;
    },
    30_000,
    250,
  );
  // it dials r1 only: r2 holds no session of the cluster and forwards every request to r1
  agent = new TowerProcess(
    `agent ${CLUSTER}`,
    [
      'agent',
      '--name',
      CLUSTER,
      '--token',
      c.spec!.connection!.token!,
      '--proxy-server',
      `http://${ADDRESS.r1}:${agentPort}`,
      '--kubeconfig',
      agentKubeconfig,
      '--max-retry-interval',
      '1s',
      '--proxy-fingerprint',
      host.fingerprint,
    ],
    {},
  );
  host.processes.push(agent);
  await replicas.get('r1')!.waitFor(new RegExp(`agent connected.*cluster\\W+${CLUSTER}\\b`), 30_000);
  for (const id of REPLICAS) {
    const issued = await host.tower([
      'kubeconfig',
      CLUSTER,
      '--gateway',
      '--user',
      'jane',
      '--group',
      'viewers',
      '--server',
      `https://${ADDRESS[id]}:${gatewayPort}/clusters/${CLUSTER}`,
    ]);
    assert.equal(issued.code, 0, issued.stderr);
    const path = join(host.dir, `jane-${id}.kubeconfig`);
    writeFileSync(path, issued.stdout, { mode: 0o600 });
    const kc = parseYaml(issued.stdout) as {
      clusters: { cluster: Record<string, string> }[];
      users: { user: Record<string, string> }[];
    };
    const b64 = (s: string | undefined) => Buffer.from(s ?? '', 'base64').toString('utf8');
    jane.set(id, {
      kubeconfig: path,
      tls: {
        ca: b64(kc.clusters[0]!.cluster['certificate-authority-data']),
        cert: b64(kc.users[0]!.user['client-certificate-data']),
        key: b64(kc.users[0]!.user['client-key-data']),
      },
    });
  }
});

after(async () => {
  // host.close() stops every proxy and agent this file started, by PID, then the host apiserver
  await host?.close();
  await member?.stop();
});

async function must(kc: string, args: string[], input?: string): Promise<string> {
  const r = await kubectl(kc, args, input);
  assert.equal(r.code, 0, `kubectl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** the access log lines of `id`'s gateway after output offset `from` */
function accessLines(id: ReplicaId, from: number): AccessLine[] {
  return replicas
    .get(id)!
    .output.slice(from)
    .split('\n')
    .filter((l) => l.startsWith('{') && l.includes('"msg":"access"'))
    .map((l) => JSON.parse(l) as AccessLine);
}

function auditEvents(): AuditEvent[] {
  return readFileSync(member.auditLog!, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditEvent);
}

/** the member's event of each ID, once every one of `ids` has arrived (the audit log is written after the answer) */
async function memberEvents(ids: string[]): Promise<Map<string, AuditEvent>> {
  let missing: string[] = [];
  return waitUntil(
    () => `the member's audit log to hold ${missing.join(', ')}`,
    () => {
      const byId = new Map(auditEvents().map((e) => [e.auditID, e]));
      missing = ids.filter((id) => !byId.has(id));
      return missing.length === 0 ? byId : undefined;
    },
    AUDIT_WAIT_MS,
    200,
  );
}

/** the resource as tower's access log names it, from a member's audit event */
function resourceOf(e: AuditEvent): string | undefined {
  const r = e.objectRef?.resource;
  return r && e.objectRef?.subresource ? `${r}/${e.objectRef.subresource}` : r;
}

/** What is wrong with the member's event for an access log line that the member answered; empty when it joins. */
function joinProblems(line: AccessLine, e: AuditEvent | undefined): string[] {
  const what = `${line.verb} ${line.path} (${line.auditId})`;
  if (!e) return [`${what}: no event with this ID in the member's audit log`];
  const out: string[] = [];
  if (e.impersonatedUser?.username !== 'jane' || !e.impersonatedUser.groups?.includes('viewers'))
    out.push(`${what}: the member acted as ${JSON.stringify(e.impersonatedUser ?? null)}, not jane in viewers`);
  if (e.user.username !== AGENT_USER) out.push(`${what}: the member saw ${e.user.username}, not the agent`);
  if (e.responseStatus?.code !== line.status)
    out.push(`${what}: the member answered ${e.responseStatus?.code}, tower logged ${line.status}`);
  if (e.verb !== line.verb) out.push(`${what}: the member's verb is ${e.verb}`);
  if (resourceOf(e) !== line.resource || e.objectRef?.namespace !== line.namespace)
    out.push(`${what}: the member's object is ${JSON.stringify(e.objectRef)}, tower logged ${line.resource}`);
  if (line.user !== 'jane' || line.groups !== 'viewers')
    out.push(`${what}: tower logged user ${line.user} groups ${line.groups}`);
  return out;
}

/**
 * What went wrong between the lines `id`'s access log wrote after `marks` and the member's audit log: each line the
 * member answered joins an event of its ID, one tower answered (`byTower`) has none; through r2, r1 logs the same ID.
 */
async function traced(
  id: ReplicaId,
  marks: Map<ReplicaId, number>,
  byTower: (l: AccessLine) => boolean,
): Promise<{ lines: AccessLine[]; problems: string[] }> {
  const lines = accessLines(id, marks.get(id)!);
  const forwarded = lines.filter((l) => !byTower(l));
  const events = await memberEvents(forwarded.map((l) => l.auditId));
  const problems = forwarded.flatMap((l) => joinProblems(l, events.get(l.auditId)));
  for (const l of lines) {
    if (!UUID.test(l.auditId)) problems.push(`${l.path}: tower logged Audit-ID ${l.auditId}, not one of its own`);
    if (byTower(l) && events.has(l.auditId)) problems.push(`${l.path}: tower answered it, yet the member has its ID`);
  }
  if (new Set(lines.map((l) => l.auditId)).size !== lines.length) problems.push(`${id} logged an ID twice`);
  if (id === 'r2') {
    // the holder logged each request r2 forwarded under r2's ID, acting as jane, naming r2
    const r1 = new Map(accessLines('r1', marks.get('r1')!).map((l) => [l.auditId, l]));
    for (const l of forwarded) {
      const there = r1.get(l.auditId);
      if (!there || there.fromReplica !== 'r2' || there.user !== 'jane' || there.status !== l.status)
        problems.push(`${l.path} (${l.auditId}): r1 logged ${JSON.stringify(there ?? null)}`);
    }
  }
  return { lines, problems };
}

/** once `id`'s access log holds each of `ids` (a line is written as the answer ends: it may follow the answer) */
async function untilLogged(id: ReplicaId, from: number, ids: string[]): Promise<void> {
  let missing: string[] = [];
  await waitUntil(
    () => `${id}'s access log to hold ${missing.join(', ')}`,
    () => {
      const have = new Set(accessLines(id, from).map((l) => l.auditId));
      missing = ids.filter((x) => !have.has(x));
      return missing.length === 0;
    },
    AUDIT_WAIT_MS,
    100,
  );
}

function marks(): Map<ReplicaId, number> {
  return new Map(REPLICAS.map((id) => [id, replicas.get(id)!.output.length]));
}

/** A request as a client sends it, with raw header lines (repeated names, any case); its answer's status and head. */
function send(
  via: ReplicaId,
  method: string,
  path: string,
  rawHeaders: string[],
): Promise<{ status: number; headers: IncomingHttpHeaders; rawHeaders: string[] }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({
      host: ADDRESS[via],
      port: gatewayPort,
      method,
      path,
      // raw header lines get no Host of Node's
      headers: ['Host', `${ADDRESS[via]}:${gatewayPort}`, ...rawHeaders],
      agent: false,
      timeout: REQUEST_TIMEOUT_MS,
      ...jane.get(via)!.tls,
      checkServerIdentity: () => undefined,
    });
    const answered = (res: { statusCode?: number; headers: IncomingHttpHeaders; rawHeaders: string[] }) =>
      resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => answered(res));
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      answered(res);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end();
  });
}

for (const via of REPLICAS) {
  const where = via === 'r1' ? 'r1, which holds the agent' : 'r2, which forwards to r1';
  test(
    `kubectl as jane through ${where}: each request's ID in tower's access log is the member's audit event of it, ` +
      `as jane, by the agent; the client got it; a refusal of tower's own reaches no audit log`,
    { timeout: 180_000 },
    async () => {
      const kc = jane.get(via)!.kubeconfig;
      const m = marks();
      const seen: string[] = [];
      const run = async (args: string[]) => {
        const r = await kubectl(kc, ['-v=8', ...args]);
        // client-go prints each answer's headers at -v=8
        for (const x of r.stderr.matchAll(/\]\s+Audit-Id: (\S+)$/gim)) seen.push(x[1]!);
        return r;
      };
      assert.equal((await run(['-n', 'default', 'get', 'pods'])).code, 0);
      assert.equal((await run(['-n', 'default', 'create', 'configmap', `cm-${via}`, '--from-literal=a=b'])).code, 0);
      assert.equal((await run(['-n', 'default', 'get', 'configmap', `cm-${via}`, '-o', 'name'])).code, 0);
      const refusedByMember = await run(['create', 'namespace', `janes-${via}`]);
      assert.match(refusedByMember.stderr, /User "jane" cannot create resource "namespaces"/);
      const refusedByTower = await run(['-n', 'default', '--as=mallory', 'get', 'pods']);
      assert.match(refusedByTower.stderr, /tower gateway: .*may not impersonate user "mallory"/);
      // an upgrade, which the member refuses: its answer is relayed as it came, with tower's ID
      const exec = await run(['-n', 'default', 'exec', 'target', '--', 'true']);
      assert.match(exec.stderr, /User "jane" cannot (create|get) resource "pods\/exec"/);

      // kubectl's own answers carry the IDs tower logs (the exec's go over an upgrade, which -v=8 may not print)
      assert.ok(seen.length >= 5, `kubectl saw ${seen.length} Audit-IDs`);
      await untilLogged(via, m.get(via)!, seen);
      const { lines, problems } = await traced(via, m, (l) => l.as === 'mallory');
      assert.deepEqual(problems, []);
      const refusals = lines.filter((l) => l.as === 'mallory');
      assert.ok(refusals.length >= 1 && refusals.every((l) => l.status === 403), JSON.stringify(refusals));
      for (const want of [
        { verb: 'list', resource: 'pods', namespace: 'default', status: 200 },
        { verb: 'create', resource: 'configmaps', namespace: 'default', status: 201 },
        { verb: 'get', resource: 'configmaps', namespace: 'default', status: 200 },
        { verb: 'create', resource: 'namespaces', status: 403 },
        { verb: 'get', resource: 'pods/exec', namespace: 'default', status: 403 },
      ])
        assert.ok(
          lines.some((l) => Object.entries(want).every(([k, v]) => l[k as keyof AccessLine] === v)),
          `no access log line ${JSON.stringify(want)} in ${JSON.stringify(lines, null, 1)}`,
        );
      // and nothing reached the member as jane but what tower logged
      const logAll = new Set([...REPLICAS.flatMap((id) => accessLines(id, 0).map((l) => l.auditId))]);
      const untraced = auditEvents().filter((e) => e.impersonatedUser?.username === 'jane' && !logAll.has(e.auditID));
      assert.deepEqual(untraced, [], 'member events as jane that no tower access log line names');
    },
  );

  test(
    `a client's own Audit-ID (every copy, any case, and the replicas' header) never reaches the member through ` +
      `${where}; a list, a watch, an upgrade and tower's own refusals each answer tower's ID`,
    { timeout: 120_000 },
    async () => {
      const m = marks();
      const own = [
        'Audit-ID',
        CLIENT_AUDIT_ID,
        'audit-id',
        `${CLIENT_AUDIT_ID}-2`,
        'AUDIT-ID',
        `${CLIENT_AUDIT_ID}-3`,
        'X-Tower-Peer-Audit-ID',
        CLIENT_PEER_AUDIT_ID,
      ];
      const upgrade = [
        'Connection',
        'Upgrade',
        'Upgrade',
        'websocket',
        'Sec-WebSocket-Version',
        '13',
        'Sec-WebSocket-Key',
        Buffer.alloc(16, 1).toString('base64'),
        'Sec-WebSocket-Protocol',
        'v4.channel.k8s.io',
      ];
      const base = `/clusters/${CLUSTER}/api/v1/namespaces/default`;
      const asked = [
        { what: 'a list', method: 'GET', path: `${base}/configmaps`, headers: own, status: 200, byTower: false },
        {
          what: 'a watch the member ends',
          method: 'GET',
          path: `${base}/configmaps?watch=1&timeoutSeconds=1`,
          headers: own,
          status: 200,
          byTower: false,
        },
        {
          what: 'an upgrade the member refuses',
          method: 'GET',
          path: `${base}/pods/target/exec?command=true&stdout=true`,
          headers: [...own, ...upgrade],
          status: 403,
          byTower: false,
        },
        {
          what: "a request for another cluster (tower's refusal)",
          method: 'GET',
          path: '/clusters/elsewhere/api/v1/pods',
          headers: own,
          status: 403,
          byTower: true,
        },
        {
          what: "an upgrade for another cluster (tower's refusal, written raw)",
          method: 'GET',
          path: '/clusters/elsewhere/api/v1/namespaces/default/pods/nope/exec?command=true',
          headers: [...own, ...upgrade],
          status: 403,
          byTower: true,
        },
      ];
      const answers: ((typeof asked)[number] & { id: string })[] = [];
      for (const a of asked) {
        const r = await send(via, a.method, a.path, a.headers);
        assert.equal(r.status, a.status, a.what);
        const ids = r.rawHeaders.filter((_, i) => i % 2 === 1 && /^audit-id$/i.test(r.rawHeaders[i - 1]!));
        assert.equal(ids.length, 1, `${a.what}: one Audit-ID in the answer, not ${JSON.stringify(ids)}`);
        assert.match(ids[0]!, UUID, `${a.what}: tower's ID`);
        answers.push({ ...a, id: ids[0]! });
      }
      await untilLogged(
        via,
        m.get(via)!,
        answers.map((a) => a.id),
      );
      const byTower = new Set(answers.filter((a) => a.byTower).map((a) => a.id));
      const { lines, problems } = await traced(via, m, (l) => byTower.has(l.auditId));
      assert.deepEqual(problems, []);
      const logged = new Map(lines.map((l) => [l.auditId, l]));
      for (const a of answers) {
        const line = logged.get(a.id);
        assert.ok(line, `${a.what}: the ID the client got (${a.id}) is in the access log`);
        assert.equal(line.status, a.status, a.what);
      }
      // the join found each forwarded one at the member; none of the client's own IDs is anywhere there
      const clientIds = new Set([
        CLIENT_AUDIT_ID,
        `${CLIENT_AUDIT_ID}-2`,
        `${CLIENT_AUDIT_ID}-3`,
        CLIENT_PEER_AUDIT_ID,
      ]);
      const leaked = auditEvents().filter((e) => [...clientIds].some((c) => e.auditID.includes(c)));
      assert.deepEqual(leaked, [], 'audit events under an ID the client chose');
      const watch = lines.find((l) => l.auditId === answers[1]!.id)!;
      assert.equal(watch.verb, 'watch');
    },
  );
}
