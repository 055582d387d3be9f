import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { request } from 'node:https';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { startMemberCluster, type MemberCluster } from './support/cluster.ts';
import { hostileAgent, type HostileAgent } from './support/hostile-agent.ts';
import { pattern } from './support/pattern.ts';
import { kubectl, Stack } from './support/stack.ts';
import { freePort, ROOT, run, tempDir, tower, TowerProcess, waitUntil } from './support/tower.ts';

/**
 * What an operator sees: kubectl printing tower's own answers, `tower clusters` and `tower delete`,
 * health and metrics (checked with promtool, scraped by a real Prometheus).
 */
let member: MemberCluster;
let stack: Stack;
let alphaKc: string;
let alpha: TowerProcess;
const hostile: HostileAgent[] = [];

before(async () => {
  member = await startMemberCluster();
  stack = new Stack();
  await stack.startProxy(['--request-timeout', '2s']);
  const { token } = await stack.token('alpha');
  alpha = stack.startAgent('alpha', token, member.kubeconfig, ['--health-port', '0', '--health-host', '127.0.0.1']);
  await alpha.waitFor(/connected to proxy/);
  alphaKc = await stack.kubeconfig('alpha');
});

after(async () => {
  for (const h of hostile) h.close();
  await stack?.close();
  await member?.stop();
});

/** a hostile agent for `name` whose kube-apiserver never answers */
async function silentCluster(s: Stack, name: string): Promise<string> {
  const { token } = await s.token(name);
  const a = await hostileAgent(
    s.proxyUrl,
    [
      {
        Version: 'test',
        Name: name,
        Token: token,
        KubernetesSvcHost: '10.0.0.1:443',
        KubeSphereSvcHost: 'ks:80',
        TowerFeatures: ['tls-at-agent'],
      },
    ],
    () => ({}),
  );
  hostile.push(a);
  assert.equal(a.reply.failed, false, a.reply.text);
  return s.kubeconfig(name);
}

describe("kubectl prints the answers tower makes itself, as the server's", () => {
  test('503: a cluster whose agent went away (discovery cached from when it was there)', async () => {
    const { token } = await stack.token('delta');
    const agent = stack.startAgent('delta', token, member.kubeconfig);
    await agent.waitFor(/connected to proxy/);
    const kc = await stack.kubeconfig('delta');
    const cache = tempDir('kubectl-cache');
    const warm = await kubectl(kc, ['--cache-dir', cache, 'get', 'namespaces']);
    assert.equal(warm.code, 0, warm.stderr);
    const from = stack.proxy!.output.length;
    await agent.stop();
    await stack.proxy!.waitFor(/agent disconnected cluster=delta/, 10_000, from);
    const r = await kubectl(kc, ['--cache-dir', cache, 'get', 'namespaces']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      pattern(
        /^Error from server \(ServiceUnavailable\): cluster "delta" has no agent /m,
        /connected to tower \(start one with the command that "tower token delta" prints\)$/m,
      ),
    );
  });

  test(
    'a cluster whose agent never connected: on first use (no discovery cache) kubectl prints why at once, ' +
      'having asked few times (nothing invites a retry that cannot help)',
    async () => {
      await stack.token('ghost');
      const kc = await stack.kubeconfig('ghost');
      const r = await kubectl(kc, ['--cache-dir', tempDir('kubectl-cache'), 'get', 'namespaces']);
      assert.equal(r.code, 1);
      // discovery's answer is text, which kubectl prints (a 503's it would replace with a generic line)
      assert.match(
        r.stderr,
        pattern(
          /^Error from server \(InternalError\): an error on the server /m,
          /\("tower gateway: cluster \\"ghost\\" has no agent connected to tower/m,
        ),
      );
      assert.doesNotMatch(r.stderr, /the server is currently unable to handle the request/);
      // with Retry-After, client-go asks each discovery document 11 times (55 requests, a minute)
      const asked = async () => {
        const text = await (await fetch(`${stack.proxyUrl}/metrics`)).text();
        return [...text.matchAll(/^tower_proxy_gateway_requests_total\{cluster="ghost",[^}]*\} (\d+)$/gm)].reduce(
          (n, m) => n + Number(m[1]),
          0,
        );
      };
      const n = await waitUntil('the metrics to count them', async () => (await asked()) || undefined);
      assert.ok(n <= 12, `kubectl asked ${n} times`);
    },
  );

  test('an agent that just left may be back in a moment: kubectl waits for it (Retry-After) and succeeds', async () => {
    const { token } = await stack.token('blink');
    const first = stack.startAgent('blink', token, member.kubeconfig);
    await first.waitFor(/connected to proxy/);
    const kc = await stack.kubeconfig('blink');
    const from = stack.proxy!.output.length;
    await first.stop();
    await stack.proxy!.waitFor(/agent disconnected cluster=blink/, 10_000, from);
    const pending = kubectl(kc, ['--cache-dir', tempDir('kubectl-cache'), 'get', 'namespaces', '-o', 'name']);
    await new Promise((r) => setTimeout(r, 2000));
    const second = stack.startAgent('blink', token, member.kubeconfig);
    await second.waitFor(/connected to proxy/);
    const r = await pending;
    await second.stop(); // the metrics tests below count the agents connected
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^namespace\/default$/m);
  });

  test("504: the member's kube-apiserver does not answer within --request-timeout", async () => {
    const kc = await silentCluster(stack, 'silent');
    const r = await kubectl(kc, ['get', '--raw', '/api/v1/namespaces']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      pattern(
        /^Error from server \(Timeout\): tower gateway: the kube-apiserver of /m,
        /cluster "silent" did not answer within 2s \(the proxy's --request-timeout\)$/m,
      ),
    );
  });

  test('404: a cluster that was deleted (tower delete)', async () => {
    const { token } = await stack.token('gone');
    const agent = stack.startAgent('gone', token, member.kubeconfig, ['--max-retry', '1']);
    await agent.waitFor(/connected to proxy/);
    const kc = await stack.kubeconfig('gone');
    const from = stack.proxy!.output.length;
    const del = await tower(['delete', 'gone'], stack.env);
    assert.equal(del.code, 0, del.stderr);
    assert.match(
      del.stdout,
      /cluster "gone" deleted from .*; its agents are disconnected and their token no longer works/,
    );
    // the proxy closes the session; the agent's reconnect is refused, and it exits
    await stack.proxy!.waitFor(/cluster removed from the store cluster=gone sessionsClosed=1/, 10_000, from);
    assert.equal(await agent.exited, 1);
    assert.match(agent.output, /the proxy refused agent "gone"/);
    const r = await kubectl(kc, ['get', '--raw', '/api/v1/namespaces']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /^Error from server \(NotFound\): cluster "gone" not found in tower \(register it with: tower token gone\)$/m,
    );
    const again = await tower(['delete', 'gone'], stack.env);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^tower delete: cluster "gone" not found in .* \(see: tower clusters\)$/m);
  });

  test('403: a certificate bound to another cluster', async () => {
    // (kubectl get --raw drops the server's path: the path names the cluster here)
    const r = await kubectl(alphaKc, ['get', '--raw', '/clusters/delta/api/v1/namespaces']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      pattern(
        /^Error from server \(Forbidden\): tower gateway: this client certificate is /m,
        /for cluster "alpha", not "delta" \(get one with: tower kubeconfig delta\)$/m,
      ),
    );
  });

  test("401: no client certificate from tower's CA", async () => {
    const doc = parse(readFileSync(alphaKc, 'utf8'));
    doc.users[0].user = { token: 'not-a-certificate' };
    const kc = join(stack.dataDir, 'token.kubeconfig');
    writeFileSync(kc, stringify(doc), { mode: 0o600 });
    const r = await kubectl(kc, ['get', '--raw', '/api/v1/namespaces']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      pattern(
        /^error: You must be logged in to the server \(tower gateway: a client certificate signed /m,
        /by tower's CA is required \(.*\); get a kubeconfig with: tower kubeconfig <cluster>\)$/m,
      ),
    );
  });

  test('400: a cluster name that cannot be one', async () => {
    const r = await kubectl(alphaKc, ['get', '--raw', '/clusters/Bad_Name/api/v1/namespaces']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^Error from server \(BadRequest\): tower gateway: invalid cluster name "Bad_Name": /m);
  });

  test(
    '429: the cluster has --max-requests-inflight requests in flight ' +
      '(kubectl retries as Retry-After says, then prints it)',
    async () => {
      const busy = new Stack();
      try {
        await busy.startProxy(['--max-requests-inflight', '1', '--request-timeout', '60s']);
        const kc = await silentCluster(busy, 'busy');
        // one request held in flight by the silent kube-apiserver
        const doc = parse(readFileSync(kc, 'utf8'));
        const b64 = (k: string) => Buffer.from(doc.users[0].user[k], 'base64');
        const held = request({
          host: '127.0.0.1',
          port: busy.gatewayPort,
          path: '/clusters/busy/api/v1/pods',
          method: 'GET',
          ca: Buffer.from(doc.clusters[0].cluster['certificate-authority-data'], 'base64'),
          cert: b64('client-certificate-data'),
          key: b64('client-key-data'),
        });
        held.on('error', () => {});
        held.end();
        await waitUntil('the held request to reach the agent', () => hostile.at(-1)!.heads.length >= 1);
        const r = await kubectl(kc, ['get', '--raw', '/api/v1/namespaces']);
        held.destroy();
        assert.equal(r.code, 1);
        assert.match(
          r.stderr,
          pattern(
            /^Error from server \(TooManyRequests\): tower gateway: cluster "busy" has 1 requests in /m,
            /flight through tower, its limit \(the proxy's --max-requests-inflight\); retry shortly$/m,
          ),
        );
        const metrics = await (await fetch(`${busy.proxyUrl}/metrics`)).text();
        assert.match(metrics, /^tower_proxy_inflight_refusals_total\{cluster="busy"\} [1-9]\d*$/m);
      } finally {
        await busy.close();
      }
    },
  );
});

describe('tower clusters', () => {
  test('lists each cluster with its agents, since when, and (wide) their version and address', async () => {
    const r = await tower(['clusters', '-o', 'wide'], stack.env);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.match(lines[0]!, /^NAME\s+AGENTS\s+CONNECTED\s+LAST SEEN\s+VERSION\s+ADDRESS\s+NOTE$/);
    assert.match(r.stdout, /^alpha\s+1\s+\d+[smhd]\s+now\s+0\.1\.0\s+127\.0\.0\.1:\d+$/m);
    assert.match(r.stdout, /^delta\s+0\s+-\s+\d+[smhd] ago\s+-\s+-$/m);
    assert.doesNotMatch(r.stdout, /^gone/m);
    const json = JSON.parse((await tower(['clusters', '-o', 'json'], stack.env)).stdout) as {
      clusters: { name: string; agents: number; agentVersion?: string }[];
    };
    const row = json.clusters.find((c) => c.name === 'alpha');
    assert.equal(row?.agents, 1);
    assert.equal(row?.agentVersion, '0.1.0');
    const bad = await tower(['clusters', '-o', 'xml'], stack.env);
    assert.equal(bad.code, 1);
    assert.match(
      bad.stderr,
      /^tower clusters: invalid --output value "xml" from flag --output: use table, wide, json or yaml$/m,
    );
  });

  test('without a proxy serving the data dir it says so, and AGENTS is unknown', async () => {
    const dir = tempDir('noproxy');
    const env = { TOWER_HOME: dir };
    assert.equal((await tower(['token', 'lonely'], env)).code, 0);
    const r = await tower(['clusters'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /no proxy is serving .*: AGENTS unknown/);
    assert.match(r.stdout, /^lonely\s+-\s+-\s+never$/m);
  });

  test(
    'status and proxy files written by someone else ' + '(wrong types, terminal escapes, pid -1) are shown safely',
    async () => {
      const dir = tempDir('hostile-status');
      const env = { TOWER_HOME: dir };
      assert.equal((await tower(['token', 'odd'], env)).code, 0);
      writeFileSync(
        join(dir, 'status', 'odd.yaml'),
        stringify({
          connected: true,
          agents: 'many',
          since: { not: 'a time' },
          lastSeen: '2026-01-01T00:00:00Z',
          agentVersions: '\x1b]0;pwned\x07\x1b[31mred',
          agentAddresses: '10.0.0.1:5000',
        }),
      );
      // kill(-1, 0) reaches every process: a pid of -1 must not pass for a running proxy
      writeFileSync(
        join(dir, 'proxy.yaml'),
        stringify({
          agentUrl: 'http://127.0.0.1:1',
          gatewayUrl: 'https://127.0.0.1:2',
          hostKeyFingerprint: `SHA256:${'A'.repeat(43)}`,
          pid: -1,
        }),
      );
      for (const output of ['wide', 'json', 'yaml']) {
        const r = await tower(['clusters', '-o', output], env);
        assert.equal(r.code, 0, `${output}: ${r.stderr}`);
        assert.doesNotMatch(r.stdout + r.stderr, /\x1b|\x07/, output);
        assert.match(r.stdout, /odd/);
      }
      const wide = await tower(['clusters', '-o', 'wide'], env);
      assert.match(wide.stderr, /no proxy is serving .* \(the last one was pid -1\): AGENTS unknown/);
      assert.match(wide.stdout, /^odd\s+-\s+-\s+\d+d ago\s+-\s+10\.0\.0\.1:5000$/m);
    },
  );
});

describe('health and metrics', () => {
  test('the proxy answers /livez and /readyz as Kubernetes components do, and /health as the Go tower', async () => {
    const get = async (path: string) => {
      const r = await fetch(`${stack.proxyUrl}${path}`);
      return [r.status, await r.text()] as const;
    };
    assert.deepEqual(await get('/livez'), [200, 'ok']);
    assert.deepEqual(await get('/readyz'), [200, 'ok']);
    assert.deepEqual(await get('/readyz?verbose'), [
      200,
      '[+]ping ok\n[+]shutdown ok\n[+]store ok\n[+]listeners ok\nreadyz check passed\n',
    ]);
    assert.deepEqual(await get('/health'), [200, 'OK\n']);
  });

  test("the agent's --health-port: /readyz is ok while connected to a proxy", async () => {
    const port = Number(/health and metrics serving address=127\.0\.0\.1:(\d+)/.exec(alpha.output)![1]);
    const r = await fetch(`http://127.0.0.1:${port}/readyz?verbose`);
    assert.equal(r.status, 200);
    assert.equal(await r.text(), '[+]proxy-connection ok\nreadyz check passed\n');
  });

  test('/metrics of the proxy and of the agent pass promtool check metrics and count what happened', async () => {
    const port = Number(/health and metrics serving address=127\.0\.0\.1:(\d+)/.exec(alpha.output)![1]);
    // a get of its own: kubectl's discovery requests, the earlier tests' gets, are not made when its cache
    // (~/.kube/cache, by host and port) is warm from an earlier run that had the same port
    const got = await kubectl(alphaKc, ['get', 'namespace', 'default', '-o', 'name']);
    assert.equal(got.code, 0, got.stderr);
    // the proxy renders its metrics at most once a second: one from before the last requests may be served still
    await new Promise((r) => setTimeout(r, 1100));
    const proxyText = await (await fetch(`${stack.proxyUrl}/metrics`)).text();
    const agentText = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    for (const [what, text] of [
      ['proxy', proxyText],
      ['agent', agentText],
    ] as const) {
      const r = await run('promtool', ['check', 'metrics'], { input: text });
      assert.equal(r.code, 0, `promtool on the ${what}'s metrics:\n${r.stdout}${r.stderr}`);
    }
    assert.match(proxyText, /^tower_proxy_agents_connected\{cluster="alpha"\} 1$/m);
    // a registered cluster without an agent has its series, at 0, and every one its info series
    assert.match(proxyText, /^tower_proxy_agents_connected\{cluster="delta"\} 0$/m);
    assert.match(proxyText, /^tower_proxy_cluster_info\{cluster="delta"\} 1$/m);
    assert.match(proxyText, /^tower_proxy_agent_handshakes_total\{result="accepted"\} [1-9]\d*$/m);
    // the deleted cluster's agent, refused when it came back
    assert.match(proxyText, /^tower_proxy_agent_handshakes_total\{result="unauthorized"\} [1-9]\d*$/m);
    assert.match(proxyText, /^tower_proxy_login_failures_total\{reason="unknown_cluster"\} [1-9]\d*$/m);
    assert.match(proxyText, /^tower_proxy_gateway_requests_total\{cluster="silent",verb="list",code="504"\} 1$/m);
    assert.match(proxyText, /^tower_proxy_gateway_requests_total\{cluster="alpha",verb="get",code="200"\} [1-9]\d*$/m);
    assert.match(proxyText, /^tower_proxy_gateway_request_duration_seconds_count\{cluster="alpha"\} [1-9]\d*$/m);
    assert.match(proxyText, /^tower_proxy_tunnel_bytes_total\{cluster="alpha",direction="to_agent"\} [1-9]\d*$/m);
    assert.match(proxyText, /^tower_proxy_upstream_dial_duration_seconds_count\{cluster="alpha"\} [1-9]\d*$/m);
    assert.match(proxyText, /^tower_proxy_leader 1$/m);
    // a deleted cluster takes its series with it
    assert.doesNotMatch(proxyText, /cluster="gone"/);
    assert.match(proxyText, /^process_resident_memory_bytes \d+/m);
    assert.match(agentText, /^tower_agent_connected 1$/m);
    assert.match(agentText, /^tower_agent_tunnel_bytes_total\{direction="from_proxy"\} [1-9]\d*$/m);
    assert.match(agentText, /^tower_agent_upstream_dial_duration_seconds_count\{result="ok"\} [1-9]\d*$/m);
  });

  test(
    'a stranger asking for /metrics in a loop costs one rendering a second; ' + 'everyone else is still served',
    async () => {
      const started = Date.now();
      const bodies = new Set<string>();
      for (let i = 0; i < 300; i++) bodies.add(await (await fetch(`${stack.proxyUrl}/metrics`)).text());
      const seconds = (Date.now() - started) / 1000;
      assert.ok(
        bodies.size <= Math.ceil(seconds) + 1,
        `${bodies.size} renderings for 300 scrapes in ${seconds.toFixed(1)} s`,
      );
      const r = await kubectl(alphaKc, ['get', 'namespaces', '-o', 'name']);
      assert.equal(r.code, 0, r.stderr);
    },
  );

  test(
    'a real Prometheus scraping the proxy and the agent answers how many agents are connected, and fires the ' +
      "shipped alerts: a registered cluster's agent missing, fewer replicas than desired",
    async () => {
      const healthPort = Number(/health and metrics serving address=127\.0\.0\.1:(\d+)/.exec(alpha.output)![1]);
      const dir = tempDir('prometheus');
      const web = await freePort();
      // the shipped rules, as they are but for their waits (for: 5m and 10m would outlast the test)
      const shipped = join(ROOT, 'docs', 'prometheus-rules.yaml');
      const checked = await run('promtool', ['check', 'rules', shipped]);
      assert.equal(checked.code, 0, checked.stdout + checked.stderr);
      writeFileSync(join(dir, 'rules.yaml'), readFileSync(shipped, 'utf8').replace(/^( +for:) \S+$/gm, '$1 0s'));
      // kube-state-metrics' word for the replicas the Deployment asks for
      const ksm = createServer((_req, res) =>
        res.end('kube_deployment_spec_replicas{namespace="kubesphere-system",deployment="tower"} 2\n'),
      );
      await new Promise<void>((resolve) => ksm.listen(0, '127.0.0.1', resolve));
      const ksmPort = (ksm.address() as { port: number }).port;
      writeFileSync(
        join(dir, 'prometheus.yml'),
        stringify({
          global: { scrape_interval: '1s', evaluation_interval: '1s' },
          rule_files: [join(dir, 'rules.yaml')],
          scrape_configs: [
            { job_name: 'tower-proxy', static_configs: [{ targets: [`127.0.0.1:${stack.agentPort}`] }] },
            { job_name: 'tower-agent', static_configs: [{ targets: [`127.0.0.1:${healthPort}`] }] },
            { job_name: 'kube-state-metrics', static_configs: [{ targets: [`127.0.0.1:${ksmPort}`] }] },
          ],
        }),
      );
      const prom = new TowerProcess(
        'prometheus',
        [
          `--config.file=${join(dir, 'prometheus.yml')}`,
          `--storage.tsdb.path=${join(dir, 'data')}`,
          `--web.listen-address=127.0.0.1:${web}`,
        ],
        {},
        'prometheus',
      );
      try {
        const query = async (q: string) => {
          const r = await fetch(`http://127.0.0.1:${web}/api/v1/query?query=${encodeURIComponent(q)}`);
          const body = (await r.json()) as { data?: { result: { value: [number, string] }[] } };
          return body.data?.result[0]?.value[1];
        };
        // alpha's agent and the hostile one of "silent" are connected; delta's and gone's are not
        const connected = await waitUntil(
          'Prometheus to answer the connected agent count',
          async () => (await query('sum(tower_proxy_agents_connected)')) === '2' && '2',
          60_000,
          500,
        );
        assert.equal(connected, '2');
        assert.equal(
          await waitUntil(
            "the agent's own metric",
            () => query('tower_agent_connected{job="tower-agent"}'),
            20_000,
            500,
          ),
          '1',
        );
        assert.equal(await query('up{job="tower-proxy"}'), '1');
        // delta is registered and has never had an agent: its series is there, at 0, and the alert fires
        assert.equal(await query('tower_proxy_agents_connected{cluster="delta"}'), '0');
        assert.equal(await query('tower_proxy_cluster_info{cluster="delta"}'), '1');
        const firing = async () => {
          const r = await fetch(`http://127.0.0.1:${web}/api/v1/alerts`);
          const body = (await r.json()) as { data: { alerts: { labels: Record<string, string>; state: string }[] } };
          return body.data.alerts
            .filter((a) => a.state === 'firing')
            .map((a) => `${a.labels.alertname}${a.labels.cluster ? ` ${a.labels.cluster}` : ''}`)
            .sort();
        };
        const alerts = await waitUntil(
          'the alerts to fire',
          async () => {
            const now = await firing();
            return now.includes('TowerAgentMissing delta') && now.includes('TowerProxyReplicasMissing')
              ? now
              : undefined;
          },
          60_000,
          500,
        );
        assert.ok(!alerts.includes('TowerAgentMissing alpha'), `alpha's agent is connected: ${alerts.join(', ')}`);
      } finally {
        await prom.stop();
        ksm.close();
      }
    },
  );
});
