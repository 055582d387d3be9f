/**
 * tower as its users run it, on a real node: its image imported into containerd, `tower install … | kubectl
 * apply -f -`, pods probed by the kubelet, agents reaching the proxy through kube-proxy and cluster DNS, and
 * kubectl's exec, attach, logs and port-forward through the gateway into real containers. The tests run in
 * order and build on each other, as a user's first hour does.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request, type RequestOptions } from 'node:https';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parse } from 'yaml';
import { removeDir, tempDir, TowerProcess, waitUntil } from '../support/tower.ts';
import {
  ADMIN,
  fromThisMachine,
  install,
  json,
  k,
  kOk,
  kubectl,
  memoryValue,
  NS,
  podProcesses,
  podUid,
  sleep,
  towerOk,
  type ContainerProcess,
  type Json,
} from './node.ts';

const CLUSTER = 'alpha';
/** a second cluster, the same node, whose agent runs on this machine and records exec sessions */
const RECORDED = 'recorded';
const PROXY_LIMIT = 256 * 1024 * 1024;
const AGENT_LIMIT = 192 * 1024 * 1024;
const APP_NS = 'workloads';

let work: string;
/** the gateway as user "ops" in system:masters, and as "jane" in "viewers", from this machine */
let ops: string;
let jane: string;

/** the peak of every tower container's memory, sampled through the whole suite */
const peaks = new Map<string, { role: string; rss: number; usage: number; limit: number; pod?: string }>();
let sampler: NodeJS.Timeout | undefined;
const sample = () => {
  for (const p of podProcesses('tower')) {
    try {
      const stat = readStat(p.memoryCgroup);
      const key = p.memoryCgroup;
      const seen = peaks.get(key) ?? { role: p.args[1], rss: 0, usage: 0, limit: 0 };
      seen.rss = Math.max(seen.rss, stat.rss + stat.mapped_file);
      seen.usage = Math.max(seen.usage, memoryValue(p.memoryCgroup, 'memory.max_usage_in_bytes'));
      seen.limit = memoryValue(p.memoryCgroup, 'memory.limit_in_bytes');
      peaks.set(key, seen);
    } catch {
      // the container ended meanwhile
    }
  }
};
/** a memory cgroup's memory.stat (v1), by key */
function readStat(cgroup: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(join(cgroup, 'memory.stat'), 'utf8').split('\n')) {
    const [key, value] = line.split(' ');
    if (key) out[key] = Number(value);
  }
  return out;
}

before(() => {
  work = tempDir('node');
  sampler = setInterval(sample, 1000);
});

after(() => {
  clearInterval(sampler);
  removeDir(work);
});

/** the running containers of a Deployment in kubesphere-system, by their process */
async function containersOf(role: 'proxy' | 'agent'): Promise<ContainerProcess[]> {
  return podProcesses('tower').filter((p) => p.args[1] === role);
}

async function rolledOut(deployment: string): Promise<void> {
  await kOk(['rollout', 'status', '-n', NS, `deployment/${deployment}`, '--timeout=180s'], undefined, 200_000);
}

test('tower install proxy | kubectl apply: Ready by its own probes, not root, root filesystem read-only', async () => {
  await install(['proxy', '--kubeconfig', ADMIN, '--with-crd', '--with-namespace']);
  await rolledOut('tower');
  const pods = (await json(['get', 'pods', '-n', NS, '-l', 'app=tower'])).items;
  assert.equal(pods.length, 1);
  const c = pods[0].spec.containers[0];
  assert.deepEqual([c.readinessProbe.httpGet.path, c.livenessProbe.httpGet.path], ['/readyz', '/livez']);
  const ready = pods[0].status.conditions.find((x: { type: string }) => x.type === 'Ready');
  assert.equal(ready.status, 'True');
  const [proc] = await containersOf('proxy');
  assert.ok(proc, 'no tower proxy process in a pod on this machine');
  assert.equal(proc.uid, 65532, 'the proxy runs as the image user (nonroot)');
  // what ps, top and pidof call it (Node names its main thread MainThread)
  assert.equal(readFileSync(`/proc/${proc.pid}/comm`, 'utf8'), 'tower\n');
  assert.ok(proc.rootOptions.includes('ro'), `the proxy's root filesystem is mounted ${proc.rootOptions.join(',')}`);
  assert.equal(memoryValue(proc.memoryCgroup, 'memory.limit_in_bytes'), PROXY_LIMIT);
});

test(
  'a Cluster applied as KubeSphere does; the agent, installed with the join command `tower token` prints, reaches ' +
    "the proxy by its Service's DNS name through kube-proxy, and the Cluster turns AgentAvailable",
  async () => {
    await kOk(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'cluster.kubesphere.io/v1alpha1',
        kind: 'Cluster',
        metadata: { name: CLUSTER },
        spec: { joinFederation: true, enable: true, provider: 'tower-node', connection: { type: 'proxy' } },
      }),
    );
    const printed = await towerOk(['token', CLUSTER, '--kubeconfig', ADMIN]);
    const join = /^ {2}\S+ install agent (.*) \| kubectl/m.exec(printed);
    assert.ok(join, `no install agent command in:\n${printed}`);
    const args = join[1].split(' ');
    assert.equal(args[args.indexOf('--proxy-server') + 1], 'http://tower.kubesphere-system.svc:8080');
    await install(['agent', ...args]);
    await rolledOut('tower-agent');
    const agent = (await json(['get', 'pods', '-n', NS, '-l', 'app=tower-agent'])).items[0];
    assert.equal(agent.status.conditions.find((x: { type: string }) => x.type === 'Ready').status, 'True');
    const [proc] = await containersOf('agent');
    assert.equal(proc.uid, 65532, 'the agent runs as the image user (nonroot)');
    assert.ok(proc.rootOptions.includes('ro'));
    assert.equal(memoryValue(proc.memoryCgroup, 'memory.limit_in_bytes'), AGENT_LIMIT);
    const logs = await kOk(['logs', '-n', NS, agent.metadata.name]);
    assert.match(logs, /connected to proxy/);
    const cluster = await waitUntil(
      'AgentAvailable True',
      async () => {
        const c = await json(['get', 'cluster', CLUSTER]);
        const cond = c.status?.conditions?.find((x: { type: string }) => x.type === 'AgentAvailable');
        return cond?.status === 'True' ? c : undefined;
      },
      60_000,
    );
    assert.ok(cluster.spec.connection.kubeconfig, 'the proxy wrote no kubeconfig into the Cluster');
  },
);

test("the Cluster's kubeconfig works from a pod, through its mc-alpha Service", async () => {
  const kubeconfig = await towerOk(['kubeconfig', CLUSTER, '--kubeconfig', ADMIN]);
  // the Service's address, as the Go tower writes it
  const service = await json(['get', 'service', '-n', NS, `mc-${CLUSTER}`]);
  assert.equal(parse(kubeconfig).clusters[0].cluster.server, `https://${service.spec.clusterIP}:6443`);
  await kOk(['create', 'namespace', APP_NS]);
  await kOk(['create', 'secret', 'generic', 'alpha-kubeconfig', '-n', APP_NS, `--from-literal=config=${kubeconfig}`]);
  await kOk(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'client', namespace: APP_NS },
      spec: {
        restartPolicy: 'Never',
        containers: [
          {
            name: 'kubectl',
            image: 'docker.io/library/kubectl:latest',
            imagePullPolicy: 'Never',
            command: ['kubectl', '--kubeconfig', '/kc/config', 'get', 'namespaces', '-o', 'name'],
            volumeMounts: [{ name: 'kc', mountPath: '/kc' }],
          },
        ],
        volumes: [{ name: 'kc', secret: { secretName: 'alpha-kubeconfig' } }],
      },
    }),
  );
  const phase = await waitUntil(
    'the client pod to finish',
    async () => {
      const p = (await json(['get', 'pod', '-n', APP_NS, 'client'])).status.phase;
      return (p === 'Succeeded' || p === 'Failed') && p;
    },
    120_000,
    500,
  );
  const logs = await kOk(['logs', '-n', APP_NS, 'client']);
  assert.equal(phase, 'Succeeded', logs);
  assert.match(logs, /^namespace\/kubesphere-system$/m);
});

test("as the certificate's user through the gateway: get, apply, and a watch that sees what changes", async () => {
  const issue = async (user: string, group: string) =>
    fromThisMachine(
      await towerOk(['kubeconfig', CLUSTER, '--kubeconfig', ADMIN, '--gateway', '--user', user, '--group', group]),
      join(work, `${user}.kubeconfig`),
    );
  ops = await issue('ops', 'system:masters');
  jane = await issue('jane', 'viewers');
  const ns = await kubectl(ops, ['get', 'namespaces', '-o', 'name']);
  assert.equal(ns.code, 0, ns.stderr);
  assert.match(ns.stdout, /namespace\/workloads/);

  const watch = new TowerProcess(
    'kubectl get -w',
    ['--kubeconfig', ops, 'get', 'configmaps', '-n', APP_NS, '-w'],
    {},
    'kubectl',
  );
  try {
    await watch.waitFor(/kube-root-ca\.crt|No resources/, 30_000);
    const applied = await kubectl(
      ops,
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: 'applied', namespace: APP_NS },
        data: { a: '1' },
      }),
    );
    assert.equal(applied.code, 0, applied.stderr);
    assert.match(applied.stdout, /configmap\/applied created/);
    await watch.waitFor(/^applied\s/m, 30_000);
  } finally {
    await watch.stop();
  }
  const seen = await kOk([
    'get',
    'configmap',
    '-n',
    APP_NS,
    'applied',
    '-o',
    'jsonpath={.metadata.managedFields[0].manager}',
  ]);
  assert.equal(seen, 'kubectl-client-side-apply');
});

/** a pod of busybox in the workloads namespace, Running */
async function busybox(name: string, command: string, extra: Record<string, unknown> = {}): Promise<void> {
  await kOk(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace: APP_NS },
      spec: {
        terminationGracePeriodSeconds: 1,
        containers: [
          {
            name: 'main',
            image: 'docker.io/library/busybox:latest',
            imagePullPolicy: 'Never',
            command: ['sh', '-c', command],
            ...extra,
          },
        ],
      },
    }),
  );
  await kOk(['wait', '-n', APP_NS, '--for=condition=Ready', `pod/${name}`, '--timeout=120s'], undefined, 130_000);
}

/** runs kubectl in a pseudo-terminal (python's pty; of `size` columns and rows if given), typing `typed`; its output
 * and exit status */
function inTerminal(
  args: string[],
  typed: string,
  size?: { columns: number; rows: number },
): Promise<{ code: number | null; output: string }> {
  const script = [
    'import fcntl, os, pty, struct, sys, termios, time',
    'pid, fd = pty.fork()',
    'if pid == 0:',
    ...(size
      ? [`    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", ${size.rows}, ${size.columns}, 0, 0))`]
      : []),
    '    os.execvp(sys.argv[1], sys.argv[1:])',
    'time.sleep(2)',
    `os.write(fd, ${JSON.stringify(typed)}.encode())`,
    'out = b""',
    'while True:',
    '    try:',
    '        d = os.read(fd, 4096)',
    '    except OSError:',
    '        break',
    '    if not d:',
    '        break',
    '    out += d',
    '_, status = os.waitpid(pid, 0)',
    'sys.stdout.buffer.write(out)',
    'sys.exit(os.waitstatus_to_exitcode(status))',
  ].join('\n');
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-c', script, 'kubectl', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

test('exec with stdin, and with a TTY, through the gateway into a real container; exit status returns', async () => {
  await busybox('box', 'sleep 3600');
  const piped = await kubectl(ops, ['exec', '-i', '-n', APP_NS, 'box', '--', 'cat'], 'through the tunnel and back\n');
  assert.equal(piped.code, 0, piped.stderr);
  assert.equal(piped.stdout, 'through the tunnel and back\n');
  const failed = await kubectl(ops, ['exec', '-n', APP_NS, 'box', '--', 'sh', '-c', 'exit 3']);
  assert.equal(failed.code, 3, failed.stderr);

  const tty = await inTerminal(
    ['--kubeconfig', ops, 'exec', '-it', '-n', APP_NS, 'box', '--', 'sh'],
    'test -t 0 && echo "a terminal of $(stty size 2>/dev/null || echo some) size"; echo typed-$((6*7)); exit 5\n',
  );
  assert.match(tty.output, /typed-42/, tty.output);
  assert.match(tty.output, /a terminal of/, tty.output);
  assert.equal(tty.code, 5, tty.output);
});

test(
  'exec on record: an agent on this machine with --record-exec carries kubectl exec (SPDY/3.1 to this v1.20 ' +
    'node) into a real container; the cast replays to exactly what kubectl printed, and says how it ended',
  async () => {
    await kOk(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'cluster.kubesphere.io/v1alpha1',
        kind: 'Cluster',
        metadata: { name: RECORDED },
        spec: { joinFederation: true, enable: true, provider: 'tower-node', connection: { type: 'proxy' } },
      }),
    );
    const printed = await towerOk(['token', RECORDED, '--kubeconfig', ADMIN]);
    const token = /^token: ([0-9a-f]{64})$/m.exec(printed)?.[1];
    const fingerprint = /--proxy-fingerprint (SHA256:\S+)/.exec(printed)?.[1];
    assert.ok(token && fingerprint, printed);
    // the proxy's agent port through its Service, as the in-cluster agent reaches it, from this machine
    const service = await json(['get', 'service', '-n', NS, 'tower']);
    const dir = join(work, 'recordings');
    const agent = new TowerProcess('agent on record', [
      'agent',
      '--name',
      RECORDED,
      '--token',
      token,
      '--proxy-server',
      `http://${service.spec.clusterIP}:8080`,
      '--proxy-fingerprint',
      fingerprint,
      '--kubeconfig',
      ADMIN,
      '--record-exec',
      dir,
      '--log-format',
      'json',
    ]);
    try {
      await agent.waitFor(/connected to proxy/, 60_000);
      const kc = await fromThisMachine(
        await towerOk([
          'kubeconfig',
          RECORDED,
          '--kubeconfig',
          ADMIN,
          '--gateway',
          '--user',
          'ops',
          '--group',
          'system:masters',
        ]),
        join(work, 'recorded-ops.kubeconfig'),
      );
      const recorded = async (args: string[], input?: string) => {
        const mark = agent.output.length;
        const r = await waitUntil('the gateway to carry an exec to the new cluster', async () => {
          const r = await kubectl(kc, ['exec', '-n', APP_NS, ...args], input);
          return /no agent|not connected|ServiceUnavailable/.test(r.stderr) ? undefined : r;
        });
        // kubectl tries WebSocket first, which this node does not speak as it asks: the SPDY session is the one
        const m = await agent.waitFor(
          /"msg":"exec session recorded".*?"file":"([^"]+)","protocol":"SPDY/,
          30_000,
          mark,
        );
        const [header, ...events] = readFileSync(m[1]!, 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l));
        const replay = events
          .filter((e: [number, string, string]) => e[1] === 'o')
          .map((e: [number, string, string]) => e[2])
          .join('');
        return { r, header, events, replay };
      };

      const printedText = await recorded(['box', '--', 'sh', '-c', 'echo "on record: $(hostname)"; seq 1 500; exit 4']);
      assert.equal(printedText.r.code, 4, printedText.r.stderr);
      assert.match(printedText.r.stdout, /^on record: box\n1\n2\n/);
      assert.equal(printedText.replay, printedText.r.stdout);
      const t = printedText.header.tower;
      assert.match(t.protocol, /^SPDY\/3\.1 v4\.channel\.k8s\.io$/);
      assert.deepEqual([t.user, t.namespace, t.pod, t.exit?.code], ['ops', APP_NS, 'box', 4]);
      assert.deepEqual(t.command, ['sh', '-c', 'echo "on record: $(hostname)"; seq 1 500; exit 4']);

      const typed = 'typed into a real container\n';
      const piped = await recorded(['-i', 'box', '--', 'cat'], typed);
      assert.equal(piped.r.code, 0, piped.r.stderr);
      assert.equal(piped.r.stdout, typed);
      assert.equal(piped.replay, typed);
      assert.deepEqual(
        piped.events.filter((e: [number, string, string]) => e[1] === 'i'),
        [],
        'stdin is not recorded without --record-stdin',
      );
      assert.deepEqual(piped.header.tower.exit, { code: 0, status: 'Success' });

      // a terminal: its size is the recording's, what it showed is what the recording shows
      const mark = agent.output.length;
      const tty = await inTerminal(
        ['--kubeconfig', kc, 'exec', '-it', '-n', APP_NS, 'box', '--', 'sh'],
        'echo "a terminal of $(stty size)"; echo typed-$((6*7)); exit 5\n',
        { columns: 101, rows: 31 },
      );
      assert.match(tty.output, /a terminal of 31 101/, tty.output);
      assert.match(tty.output, /typed-42/, tty.output);
      const m = await agent.waitFor(/"msg":"exec session recorded".*?"file":"([^"]+)","protocol":"SPDY/, 30_000, mark);
      const [header, ...events] = readFileSync(m[1]!, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l));
      const shown = events.filter((e: [number, string, string]) => e[1] === 'o').map((e: string[]) => e[2]);
      // all the container printed; kubectl's own last line it made from the exit status, which the header holds
      assert.equal(tty.code, 5, tty.output);
      assert.equal(shown.join('') + 'command terminated with exit code 5\r\n', tty.output);
      assert.deepEqual([header.width, header.height, header.tower.tty], [101, 31, true]);
      assert.ok(
        events.some((e: [number, string, string]) => e[1] === 'r' && e[2] === '101x31'),
        'the resize kubectl sent',
      );
      assert.equal(header.tower.exit?.code, tty.code);
    } finally {
      await agent.stop();
      await k(['delete', 'cluster', RECORDED]);
    }
  },
);

test('attach, logs -f and port-forward through the gateway', async () => {
  await busybox('talker', 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.3; done');
  const logs = new TowerProcess(
    'kubectl logs -f',
    ['--kubeconfig', ops, 'logs', '-f', '-n', APP_NS, 'talker'],
    {},
    'kubectl',
  );
  try {
    const first = Number((await logs.waitFor(/tick (\d+)/, 30_000))[1]);
    // following: lines written after the request began arrive on the same stream
    await logs.waitFor(new RegExp(`tick ${first + 5}\\b`), 30_000);
  } finally {
    await logs.stop();
  }

  await busybox('listener', 'cat', { stdin: true });
  const attach = spawn('kubectl', ['--kubeconfig', ops, 'attach', '-i', '-n', APP_NS, 'listener'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let attached = '';
  attach.stdout.setEncoding('utf8').on('data', (d: string) => (attached += d));
  attach.stderr.setEncoding('utf8').on('data', (d: string) => (attached += d));
  try {
    await waitUntil(
      () => `the attached container to echo what was typed: ${attached}`,
      () => {
        attach.stdin.write('hello attach\n');
        return attached.includes('hello attach');
      },
      30_000,
      1000,
    );
  } finally {
    attach.kill();
  }

  await busybox(
    'web',
    'mkdir -p /tmp/www && echo "served by $(hostname)" > /tmp/www/index.html && httpd -f -p 8000 -h /tmp/www',
  );
  const forward = new TowerProcess(
    'kubectl port-forward',
    ['--kubeconfig', ops, 'port-forward', '-n', APP_NS, 'pod/web', ':8000'],
    {},
    'kubectl',
  );
  try {
    const port = Number((await forward.waitFor(/Forwarding from 127\.0\.0\.1:(\d+) -> 8000/, 30_000))[1]);
    for (let i = 0; i < 3; i++) {
      const body = await httpGet(`http://127.0.0.1:${port}/index.html`);
      assert.equal(body, 'served by web\n');
    }
  } finally {
    await forward.stop();
  }
});

async function httpGet(url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
  assert.equal(res.status, 200);
  return res.text();
}

test("a viewer is refused exec by the member's RBAC, which names them; what they may read, they read", async () => {
  await kOk(['create', 'clusterrolebinding', 'viewers-view', '--clusterrole=view', '--group=viewers']);
  const read = await waitUntil('jane may list pods', async () => {
    const r = await kubectl(jane, ['get', 'pods', '-n', APP_NS, '-o', 'name']);
    return r.code === 0 ? r : undefined;
  });
  assert.match(read.stdout, /pod\/box/);
  const exec = await kubectl(jane, ['exec', '-n', APP_NS, 'box', '--', 'true']);
  assert.equal(exec.code, 1);
  assert.match(exec.stderr, /User "jane" cannot create resource "pods\/exec"/);
  const forward = await kubectl(jane, ['port-forward', '-n', APP_NS, 'pod/web', ':8000'], undefined, 30_000);
  assert.notEqual(forward.code, 0);
  assert.match(forward.stderr, /User "jane" cannot create resource "pods\/portforward"/);
});

test('--replicas 2 applies whole on Kubernetes 1.20 (PodDisruptionBudget policy/v1beta1, as asked)', async () => {
  // what the cluster lacks, so that asking it matters
  const unasked = await towerOk(['install', 'proxy', '--replicas', '2', '--image', 'tower:0.1.0']);
  const refused = await k(['apply', '--dry-run=server', '-f', '-'], unasked);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /no matches for kind "PodDisruptionBudget" in version "policy\/v1"/);

  await install(['proxy', '--replicas', '2', '--kubeconfig', ADMIN]);
  await rolledOut('tower');
  const pdb = await json(['get', 'poddisruptionbudget', '-n', NS, 'tower']);
  assert.equal(pdb.apiVersion, 'policy/v1beta1');
  const ready = (await json(['get', 'deployment', '-n', NS, 'tower'])).status.readyReplicas;
  assert.equal(ready, 2);
});

/** an HTTPS request to the gateway as `ops`, with the certificate of its kubeconfig, on a new connection */
function gatewayRequest(
  method: string,
  path: string,
  body?: string,
  onResponse?: (res: import('node:http').IncomingMessage) => void,
): Promise<{ status: number; body: string }> {
  const kc = parse(readFileSync(ops, 'utf8'));
  const server = new URL(kc.clusters[0].cluster.server);
  const user = kc.users[0].user;
  const opts: RequestOptions = {
    method,
    host: server.hostname,
    port: Number(server.port || 443),
    path: server.pathname + path,
    servername: kc.clusters[0].cluster['tls-server-name'],
    ca: Buffer.from(kc.clusters[0].cluster['certificate-authority-data'], 'base64'),
    cert: Buffer.from(user['client-certificate-data'], 'base64'),
    key: Buffer.from(user['client-key-data'], 'base64'),
    agent: false,
    headers: body ? { 'content-type': 'application/json' } : {},
    timeout: 30_000,
  };
  return new Promise((resolve, reject) => {
    const req = request(opts, (res) => {
      if (onResponse) {
        onResponse(res);
        res.on('end', () => resolve({ status: res.statusCode!, body: '' }));
        res.on('error', reject);
        return;
      }
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode!, body: text }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 30 s')));
    req.on('error', reject);
    req.end(body);
  });
}

test(
  'kubectl rollout restart of two proxy replicas under a request loop and an open watch: no request fails, ' +
    'and the watch resumes where it was, missing nothing',
  async () => {
    const path = `/api/v1/namespaces/${APP_NS}/configmaps`;
    const list = await gatewayRequest('GET', path);
    assert.equal(list.status, 200, list.body);
    let resourceVersion = JSON.parse(list.body).metadata.resourceVersion as string;

    // the watch: resumed from the last resourceVersion it saw whenever its connection ends
    const added = new Set<string>();
    let watches = 0;
    let watching = true;
    const watchLoop = (async () => {
      while (watching) {
        watches++;
        let buffered = '';
        await gatewayRequest(
          'GET',
          `${path}?watch=1&resourceVersion=${resourceVersion}&allowWatchBookmarks=true`,
          undefined,
          (res) => {
            res.setEncoding('utf8').on('data', (d: string) => {
              buffered += d;
              let nl;
              while ((nl = buffered.indexOf('\n')) >= 0) {
                const event = JSON.parse(buffered.slice(0, nl));
                buffered = buffered.slice(nl + 1);
                if (event.type === 'ERROR') throw new Error(`watch error: ${JSON.stringify(event.object)}`);
                resourceVersion = event.object.metadata.resourceVersion;
                if (event.type === 'ADDED') added.add(event.object.metadata.name);
              }
            });
          },
        ).catch(() => undefined);
        if (watching) await sleep(200);
      }
    })();

    const failures: string[] = [];
    const created: string[] = [];
    let looping = true;
    const requestLoop = (async () => {
      for (let i = 0; looping && i < 5000; i++) {
        const name = `during-${i}`;
        const body = JSON.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name } });
        try {
          const r = await gatewayRequest('POST', path, body);
          if (r.status === 201) created.push(name);
          else failures.push(`${name}: ${r.status} ${r.body.slice(0, 200)}`);
        } catch (err) {
          failures.push(`${name}: ${(err as Error).message}`);
        }
        await sleep(100);
      }
    })();

    await sleep(3000);
    const before = (await json(['get', 'pods', '-n', NS, '-l', 'app=tower'])).items.map((p: Json) => p.metadata.name);
    await kOk(['rollout', 'restart', '-n', NS, 'deployment/tower']);
    await rolledOut('tower');
    // until the old replicas are gone, not only the new ones ready
    await waitUntil(
      'the old replicas to end',
      async () => {
        const now = (await json(['get', 'pods', '-n', NS, '-l', 'app=tower'])).items.map((p: Json) => p.metadata.name);
        return !now.some((n: string) => before.includes(n));
      },
      120_000,
      1000,
    );
    await sleep(3000);
    looping = false;
    await requestLoop;
    const last = created.at(-1)!;
    await waitUntil(
      () => `the watch to see ${last} (it saw ${added.size} of ${created.length})`,
      () => added.has(last),
      30_000,
    );
    watching = false;
    await gatewayRequest(
      'POST',
      path,
      JSON.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'end' } }),
    );
    await watchLoop;

    assert.deepEqual(failures, [], `${failures.length} of ${failures.length + created.length} requests failed`);
    assert.ok(created.length >= 20, `only ${created.length} requests were made during the restart`);
    assert.deepEqual(
      created.filter((n) => !added.has(n)),
      [],
      'the watch missed what was created meanwhile',
    );
    assert.ok(watches >= 2, 'the watch was never cut, so it never had to resume: the restart did not reach it');
    console.log(`# rollout restart: ${created.length} requests, none failed; the watch resumed ${watches - 1} times`);
  },
);

test('every tower container stayed under its memory limit through the suite, never OOM-killed', async () => {
  sample();
  const pods = (await json(['get', 'pods', '-n', NS])).items;
  for (const p of pods) {
    for (const s of p.status.containerStatuses ?? []) {
      assert.equal(s.restartCount, 0, `${p.metadata.name} restarted: ${JSON.stringify(s.lastState)}`);
    }
  }
  const byUid = new Map<string, string>(pods.map((p: Json) => [p.metadata.uid, p.metadata.name]));
  const roles = new Set<string>();
  for (const [cgroup, m] of peaks) {
    roles.add(m.role);
    const limit = m.role === 'proxy' ? PROXY_LIMIT : AGENT_LIMIT;
    assert.equal(m.limit, limit);
    const name = byUid.get(podUid(cgroup) ?? '') ?? '(ended)';
    console.log(
      `# ${m.role} ${name}: peak resident ${(m.rss / 2 ** 20).toFixed(1)} MiB, peak charged (with page cache) ` +
        `${(m.usage / 2 ** 20).toFixed(1)} MiB, limit ${(limit / 2 ** 20).toFixed(0)} MiB`,
    );
    assert.ok(m.rss < limit, `${m.role} ${name} peaked at ${m.rss} bytes resident, over its limit ${limit}`);
  }
  assert.deepEqual([...roles].sort(), ['agent', 'proxy']);
});
