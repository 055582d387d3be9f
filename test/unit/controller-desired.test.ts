// The Kubernetes controller's decisions on their own, without an API server: which Clusters it acts on,
// the ports it allocates, the mc-<name> Service it wants, the endpoints and conditions it writes, when it
// reissues a kubeconfig and what it tells the proxy. test/kubernetes.test.ts shows the same against a
// real kube-apiserver.
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import type { V1Service } from '@kubernetes/client-node';
import { CertificateAuthority } from '../../src/pki/ca.ts';
import { renderKubeconfig } from '../../src/pki/kubeconfig.ts';
import type { Cluster } from '../../src/mode/mode.ts';
import type { KubeCluster } from '../../src/mode/kubernetes/resource.ts';
import {
  AGENT_GRACE_MS,
  allocatePort,
  desiredCluster,
  initialization,
  initializedByWriter,
  kubeconfigOutdated,
  LB_ANNOTATION,
  loadBalancerAddress,
  loadBalancerAnnotations,
  ownsService,
  sameJson,
  served,
  servedChange,
  serviceFor,
  serviceToCreate,
  serviceToReplace,
  staleEndpoint,
  verdict,
  type Observed,
} from '../../src/mode/kubernetes/desired.ts';

const TOKEN = 'ab'.repeat(32);
const NOW = Date.parse('2026-03-04T05:06:07.890Z');
const STAMP = '2026-03-04T05:06:07Z';
const EARLIER = '2026-01-01T00:00:00Z';

type Spec = NonNullable<KubeCluster['spec']>;
type Conn = NonNullable<Spec['connection']>;

/** A proxy Cluster of the federation, as KubeSphere creates it, with `conn` and `spec` laid over. */
function kubeCluster(name: string, conn: Conn = {}, spec: Partial<Spec> = {}, created = EARLIER): KubeCluster {
  return {
    apiVersion: 'cluster.kubesphere.io/v1alpha1',
    kind: 'Cluster',
    metadata: { name, resourceVersion: '7', creationTimestamp: created as unknown as Date },
    spec: { joinFederation: true, ...spec, connection: { type: 'proxy', ...conn } },
  };
}

/** A Cluster whose ports and token are written (initialization() is complete). */
function initialized(name = 'alpha', conn: Conn = {}, spec: Partial<Spec> = {}): KubeCluster {
  return kubeCluster(
    name,
    { kubernetesAPIServerPort: 6123, kubesphereAPIServerPort: 16123, token: TOKEN, ...conn },
    spec,
  );
}

function service(clusterIP: string | undefined, over: Partial<V1Service> = {}): V1Service {
  return {
    metadata: { name: 'mc-alpha', namespace: 'kubesphere-system', labels: { 'app.kubernetes.io/name': 'mc-alpha' } },
    spec: { clusterIP, ...over.spec },
    ...(over.status ? { status: over.status } : {}),
  };
}

function observed(over: Partial<Observed> = {}): Observed {
  return {
    cluster: initialized(),
    service: service('10.96.0.42'),
    agents: 0,
    writingSince: NOW - 1000,
    now: NOW,
    caPem: 'not used without agents',
    ...over,
  };
}

function conn(c: KubeCluster): Conn {
  return c.spec!.connection!;
}

describe('which Clusters the controller acts on', () => {
  test('a proxy Cluster of the federation is ours; the spec is checked before ownership', () => {
    assert.deepEqual(verdict(kubeCluster('alpha')), { kind: 'ours' });
    const malformedAndForeign = kubeCluster('alpha', { type: 'direct', token: 42 as unknown as string });
    assert.deepEqual(verdict(malformedAndForeign), {
      kind: 'malformed',
      problem: 'spec.connection.token is 42, not a string',
    });
  });

  test('each spec problem a schema-less CRD lets through is named in one line', () => {
    const cases: [KubeCluster, string][] = [
      [{ metadata: { name: 'alpha' }, spec: 'x' as unknown as Spec }, 'spec is not an object'],
      [{ metadata: { name: 'alpha' }, spec: [] as unknown as Spec }, 'spec is not an object'],
      [
        { metadata: { name: 'alpha' }, spec: { connection: 'proxy' as unknown as Conn } },
        'spec.connection is "proxy", not an object',
      ],
      [
        kubeCluster('alpha', { kubernetesAPIServerPort: 70000 }),
        'spec.connection.kubernetesAPIServerPort is 70000, not a port number',
      ],
      [
        kubeCluster('alpha', { kubesphereAPIServerPort: '16000' as unknown as number }),
        'spec.connection.kubesphereAPIServerPort is "16000", not a port number',
      ],
      [
        kubeCluster('alpha', { kubernetesAPIServerPort: 6000.5 }),
        'spec.connection.kubernetesAPIServerPort is 6000.5, not a port number',
      ],
      [
        kubeCluster('alpha', { kubernetesAPIEndpoint: { host: 'x' } as unknown as string }),
        'spec.connection.kubernetesAPIEndpoint is {"host":"x"}, not a string',
      ],
      [
        kubeCluster('Alpha'),
        'the name is not usable: a cluster name must be a DNS-1123 label: lower-case letters, digits and "-", ' +
          'starting and ending with a letter or digit (e.g. "alpha")',
      ],
    ];
    for (const [c, problem] of cases) assert.deepEqual(verdict(c), { kind: 'malformed', problem }, problem);
  });

  test('null ports and strings are allowed (the controller fills them)', () => {
    const c = kubeCluster('alpha', { kubernetesAPIServerPort: null as unknown as number, token: null as never });
    assert.deepEqual(verdict(c), { kind: 'ours' });
  });

  test('another connection type, a Cluster outside the federation, one being deleted: not ours, and why', () => {
    assert.deepEqual(verdict(kubeCluster('alpha', { type: 'direct' })), {
      kind: 'not ours',
      why: 'its spec.connection.type is "direct", not "proxy"',
    });
    assert.deepEqual(verdict(kubeCluster('alpha', {}, { joinFederation: false })), {
      kind: 'not ours',
      why: 'its spec.joinFederation is not true',
    });
    const deleting = kubeCluster('alpha');
    deleting.metadata.deletionTimestamp = new Date(NOW);
    assert.deepEqual(verdict(deleting), { kind: 'not ours', why: 'it is being deleted' });
  });

  test('a follower serves a Cluster only once the writer has given it a token and both ports', () => {
    assert.equal(initializedByWriter(initialized()), true);
    assert.equal(initializedByWriter(initialized('alpha', { token: '' })), false);
    assert.equal(initializedByWriter(initialized('alpha', { kubesphereAPIServerPort: 0 })), false);
    assert.equal(initializedByWriter(kubeCluster('alpha', { token: TOKEN, kubernetesAPIServerPort: 6123 })), false);
  });
});

describe('port allocation', () => {
  test('from the random start, within 6000-7000, wrapping around', () => {
    assert.equal(allocatePort([], 0), 6000);
    assert.equal(allocatePort([], 1000), 7000);
    assert.equal(allocatePort([], 1001), 6000);
    assert.equal(allocatePort([], 65535), 6470);
  });

  test("a port another Cluster has, as either of its ports, is skipped; a cluster's own is not counted", () => {
    const others = [
      kubeCluster('beta', { kubernetesAPIServerPort: 6470 }),
      kubeCluster('gamma', { kubesphereAPIServerPort: 16471 }),
      kubeCluster('delta', { kubernetesAPIServerPort: 6473, kubesphereAPIServerPort: 16472 }),
    ];
    assert.equal(allocatePort(others, 470), 6474);
    // the controller leaves the Cluster itself out of `others`: its own ports are free to it
    assert.equal(allocatePort(others.slice(1), 470), 6470);
  });

  test('the search wraps past 7000 to 6000, and a full range gives nothing', () => {
    const top = [kubeCluster('beta', { kubernetesAPIServerPort: 6999, kubesphereAPIServerPort: 17000 })];
    assert.equal(allocatePort(top, 999), 6000);
    const all: KubeCluster[] = [];
    for (let p = 6000; p <= 7000; p++) all.push(kubeCluster(`c${p}`, { kubernetesAPIServerPort: p }));
    assert.equal(allocatePort(all, 0), undefined);
    assert.equal(allocatePort(all.slice(1), 500), 6000);
  });

  test("another Cluster's malformed ports take nothing", () => {
    const others = [kubeCluster('beta', { kubernetesAPIServerPort: '6000' as unknown as number })];
    assert.equal(allocatePort(others, 0), 6000);
  });
});

describe('initialization: ports and token, only where missing', () => {
  const fresh = (port: number | undefined) => {
    const asked: string[] = [];
    return {
      asked,
      fresh: {
        port: () => (asked.push('port'), port),
        token: () => (asked.push('token'), TOKEN),
      },
    };
  };

  test('a new Cluster gets an allocated port, the kubesphere port 10000 above it and a token', () => {
    const { asked, fresh: f } = fresh(6123);
    const init = initialization(kubeCluster('alpha'), f);
    assert.equal(init.kind, 'write');
    if (init.kind !== 'write') return;
    assert.deepEqual(init.allocated, { kubernetes: 6123, kubesphere: 16123 });
    assert.deepEqual(conn(init.cluster), {
      type: 'proxy',
      kubernetesAPIServerPort: 6123,
      kubesphereAPIServerPort: 16123,
      token: TOKEN,
    });
    assert.deepEqual(init.cluster.status, { conditions: [] });
    assert.deepEqual(asked, ['port', 'token']);
  });

  test("a Cluster's own ports and token are kept, and nothing new is asked for", () => {
    const { asked, fresh: f } = fresh(6999);
    assert.deepEqual(initialization(initialized(), f), { kind: 'complete' });
    assert.deepEqual(asked, []);
  });

  test('a kubesphere port set by hand is kept beside an allocated kubernetes port', () => {
    const { fresh: f } = fresh(6123);
    const init = initialization(kubeCluster('alpha', { kubesphereAPIServerPort: 16500, token: TOKEN }), f);
    assert.ok(init.kind === 'write');
    assert.deepEqual(init.allocated, { kubernetes: 6123, kubesphere: 16500 });
    assert.equal(conn(init.cluster).kubesphereAPIServerPort, 16500);
  });

  test('a kubernetes port set by hand is not an allocation; the kubesphere port follows it', () => {
    const { asked, fresh: f } = fresh(6999);
    const init = initialization(kubeCluster('alpha', { kubernetesAPIServerPort: 6200, token: TOKEN }), f);
    assert.ok(init.kind === 'write');
    assert.equal(init.allocated, undefined);
    assert.equal(conn(init.cluster).kubesphereAPIServerPort, 16200);
    assert.deepEqual(asked, []);
  });

  test('with no free port, nothing is written', () => {
    const { asked, fresh: f } = fresh(undefined);
    assert.deepEqual(initialization(kubeCluster('alpha'), f), { kind: 'no free port' });
    assert.deepEqual(asked, ['port']);
  });
});

describe('the mc-<name> Service', () => {
  test('a ClusterIP Service: 6443 and 80 to the two ports, labelled as the cluster, selecting tower', () => {
    const wanted = serviceFor(initialized(), {});
    assert.deepEqual(serviceToCreate(wanted), {
      metadata: {
        name: 'mc-alpha',
        namespace: 'kubesphere-system',
        // tower's own labels too, by which tower uninstall finds it
        labels: {
          'app.kubernetes.io/name': 'mc-alpha',
          app: 'mc-alpha',
          'app.kubernetes.io/managed-by': 'tower',
          'app.kubernetes.io/part-of': 'tower',
          'app.kubernetes.io/instance': 'tower-proxy',
        },
        annotations: {},
      },
      spec: {
        selector: { 'app.kubernetes.io/name': 'tower', app: 'tower' },
        ports: [
          { name: 'kubernetes', protocol: 'TCP', port: 6443, targetPort: 6123 },
          { name: 'kubesphere', protocol: 'TCP', port: 80, targetPort: 16123 },
        ],
        type: 'ClusterIP',
      },
    });
    assert.equal(ownsService(serviceToCreate(wanted), 'alpha'), true);
    assert.equal(ownsService(serviceToCreate(wanted), 'beta'), false);
  });

  test("externalKubeAPIEnabled: a LoadBalancer with the Cluster's annotations", () => {
    const c = initialized('alpha', {}, { externalKubeAPIEnabled: true });
    c.metadata.annotations = { [LB_ANNOTATION]: '{"lb.example/class":"internal"}' };
    const lb = loadBalancerAnnotations(c);
    assert.deepEqual(lb, { annotations: { 'lb.example/class': 'internal' } });
    const body = serviceToCreate(serviceFor(c, lb!.annotations));
    assert.equal(body.spec!.type, 'LoadBalancer');
    assert.deepEqual(body.metadata!.annotations, { 'lb.example/class': 'internal' });
  });

  test('the annotation is read only for a load balancer; an unusable one is named and gives none', () => {
    const c = initialized('alpha', {}, { externalKubeAPIEnabled: true });
    c.metadata.annotations = { [LB_ANNOTATION]: '{"a":"b"}' };
    assert.equal(loadBalancerAnnotations({ ...c, spec: { ...c.spec, externalKubeAPIEnabled: false } }), undefined);
    c.metadata.annotations = {};
    assert.deepEqual(loadBalancerAnnotations(c), { annotations: {} });
    const unusable = (why: string) => ({
      annotations: {},
      problem: `annotation ${LB_ANNOTATION} is not usable (${why}); the Service keeps its annotations`,
    });
    for (const raw of ['{"a":1}', '["a"]', '"a"', 'null']) {
      c.metadata.annotations = { [LB_ANNOTATION]: raw };
      assert.deepEqual(loadBalancerAnnotations(c), unusable('want a JSON object of strings'), raw);
    }
    c.metadata.annotations = { [LB_ANNOTATION]: '{a:b}' };
    let parseError = '';
    try {
      JSON.parse('{a:b}');
    } catch (err) {
      parseError = (err as Error).message;
    }
    assert.deepEqual(loadBalancerAnnotations(c), unusable(parseError));
  });

  test('a Service already as wanted is not rewritten, whatever else it carries', () => {
    const existing = serviceToCreate(serviceFor(initialized(), {}));
    existing.spec!.clusterIP = '10.96.0.42';
    existing.metadata!.annotations = { 'someone.else/note': 'x' };
    existing.metadata!.resourceVersion = '12';
    assert.equal(serviceToReplace(existing, serviceFor(initialized(), {})), undefined);
  });

  test('new target ports keep the node ports the API assigned', () => {
    const existing: V1Service = {
      metadata: { name: 'mc-alpha' },
      spec: {
        type: 'LoadBalancer',
        ports: [
          { name: 'kubernetes', protocol: 'TCP', port: 6443, targetPort: 6001, nodePort: 31001 },
          { name: 'kubesphere', protocol: 'TCP', port: 80, targetPort: 16001, nodePort: 31002 },
        ],
      },
    };
    const next = serviceToReplace(existing, serviceFor(initialized('alpha', {}, { externalKubeAPIEnabled: true }), {}));
    assert.deepEqual(next!.spec!.ports, [
      { name: 'kubernetes', protocol: 'TCP', port: 6443, targetPort: 6123, nodePort: 31001 },
      { name: 'kubesphere', protocol: 'TCP', port: 80, targetPort: 16123, nodePort: 31002 },
    ]);
    assert.equal(next!.spec!.type, 'LoadBalancer');
    assert.equal(existing.spec!.ports![0]!.targetPort, 6001, 'the cached Service is not changed');
  });

  test('leaving the load balancer drops what only node-port types carry; a NodePort someone chose stays', () => {
    const wanted = serviceFor(initialized(), {});
    const lb: V1Service = {
      metadata: { name: 'mc-alpha', annotations: { 'lb.example/class': 'internal' } },
      spec: {
        type: 'LoadBalancer',
        externalTrafficPolicy: 'Local',
        healthCheckNodePort: 32000,
        allocateLoadBalancerNodePorts: true,
        ports: [
          { name: 'kubernetes', protocol: 'TCP', port: 6443, targetPort: 6123, nodePort: 31001 },
          { name: 'kubesphere', protocol: 'TCP', port: 80, targetPort: 16123, nodePort: 31002 },
        ],
      },
    };
    assert.deepEqual(serviceToReplace(lb, wanted), {
      metadata: { name: 'mc-alpha', annotations: { 'lb.example/class': 'internal' } },
      spec: {
        type: 'ClusterIP',
        ports: [
          { name: 'kubernetes', protocol: 'TCP', port: 6443, targetPort: 6123 },
          { name: 'kubesphere', protocol: 'TCP', port: 80, targetPort: 16123 },
        ],
      },
    });
    const nodePort = structuredClone(lb);
    nodePort.spec!.type = 'NodePort';
    assert.equal(serviceToReplace(nodePort, wanted), undefined);
  });

  test("a ClusterIP Service becomes a load balancer, the Cluster's annotations laid over its own", () => {
    const existing: V1Service = {
      metadata: { name: 'mc-alpha', annotations: { keep: 'me', 'lb.example/class': 'public' } },
      spec: { type: 'ClusterIP', ports: serviceFor(initialized(), {}).ports },
    };
    const wanted = serviceFor(initialized('alpha', {}, { externalKubeAPIEnabled: true }), {
      'lb.example/class': 'internal',
    });
    const next = serviceToReplace(existing, wanted)!;
    assert.equal(next.spec!.type, 'LoadBalancer');
    assert.deepEqual(next.metadata!.annotations, { keep: 'me', 'lb.example/class': 'internal' });
  });
});

describe("the Cluster's endpoints and conditions", () => {
  test("endpoints on the Service's ClusterIP, then Initialized True, stamped to the second", () => {
    const d = desiredCluster(observed());
    assert.equal(conn(d.cluster).kubernetesAPIEndpoint, 'https://10.96.0.42:6443');
    assert.equal(conn(d.cluster).kubesphereAPIEndpoint, 'http://10.96.0.42:80');
    assert.deepEqual(d.cluster.status!.conditions, [
      {
        type: 'Initialized',
        status: 'True',
        lastUpdateTime: STAMP,
        lastTransitionTime: STAMP,
        reason: 'Initialized',
        message: 'Cluster has been initialized',
      },
    ]);
    assert.equal(d.external, undefined);
    assert.equal(d.kubeconfig, undefined);
  });

  test('an Initialized True written by someone else is kept as it is', () => {
    const theirs = {
      type: 'Initialized',
      status: 'True',
      lastUpdateTime: EARLIER,
      lastTransitionTime: EARLIER,
      reason: 'KubeSphere',
      message: 'initialized by KubeSphere',
    };
    const c = initialized();
    c.status = { conditions: [structuredClone(theirs)] };
    assert.deepEqual(desiredCluster(observed({ cluster: c })).cluster.status!.conditions, [theirs]);
  });

  test('an IPv6 ClusterIP is bracketed', () => {
    const d = desiredCluster(observed({ service: service('fd00::2a') }));
    assert.equal(conn(d.cluster).kubernetesAPIEndpoint, 'https://[fd00::2a]:6443');
    assert.equal(conn(d.cluster).kubesphereAPIEndpoint, 'http://[fd00::2a]:80');
  });

  test('a headless or unassigned Service gives no endpoint and no Initialized', () => {
    for (const ip of ['None', undefined]) {
      const d = desiredCluster(observed({ service: service(ip) }));
      assert.equal(conn(d.cluster).kubernetesAPIEndpoint, undefined);
      assert.deepEqual(d.cluster.status!.conditions, []);
    }
  });

  test("the old ClusterIP of a recreated Service is stale; a name, a load balancer's or external IP is not", () => {
    const svc = service('10.96.0.42', {
      spec: { externalIPs: ['192.0.2.9'] },
      status: { loadBalancer: { ingress: [{ ip: '198.51.100.7' }] } },
    });
    assert.equal(staleEndpoint(undefined, '10.96.0.42', svc), true);
    assert.equal(staleEndpoint('', '10.96.0.42', svc), true);
    assert.equal(staleEndpoint('https://10.96.0.1:6443', '10.96.0.42', svc), true);
    assert.equal(staleEndpoint('https://10.96.0.42:6443', '10.96.0.42', svc), false);
    assert.equal(staleEndpoint('https://host.example:6443', '10.96.0.42', svc), false);
    assert.equal(staleEndpoint('https://198.51.100.7:6443', '10.96.0.42', svc), false);
    assert.equal(staleEndpoint('https://192.0.2.9:6443', '10.96.0.42', svc), false);
    assert.equal(staleEndpoint('not a url', '10.96.0.42', svc), false);

    const moved = initialized('alpha', {
      kubernetesAPIEndpoint: 'https://10.96.0.1:6443',
      kubesphereAPIEndpoint: 'http://ks.example:80',
    });
    const d = desiredCluster(observed({ cluster: moved }));
    assert.equal(conn(d.cluster).kubernetesAPIEndpoint, 'https://10.96.0.42:6443');
    assert.equal(conn(d.cluster).kubesphereAPIEndpoint, 'http://ks.example:80');
  });

  test('a Cluster already as desired is left equal: nothing to write', () => {
    const once = desiredCluster(observed()).cluster;
    const again = desiredCluster(observed({ cluster: once, now: NOW + 60_000 }));
    assert.equal(sameJson(again.cluster, once), true);
    assert.equal(sameJson(desiredCluster(observed()).cluster, observed().cluster), false);
  });

  test('a connected agent: AgentAvailable True without a reason, and a kubeconfig for the endpoint', () => {
    const d = desiredCluster(observed({ agents: 1 }));
    assert.deepEqual(d.kubeconfig, { why: 'missing', server: 'https://10.96.0.42:6443' });
    assert.deepEqual(
      d.cluster.status!.conditions!.find((c) => c.type === 'AgentAvailable'),
      {
        type: 'AgentAvailable',
        status: 'True',
        lastUpdateTime: STAMP,
        lastTransitionTime: STAMP,
        message: 'Agent has connected to proxy successfully.',
      },
    );
  });

  test('no endpoint yet: no kubeconfig, though the agent is available', () => {
    const d = desiredCluster(observed({ agents: 2, service: service('None') }));
    assert.equal(d.kubeconfig, undefined);
    assert.equal(d.cluster.status!.conditions![0]!.type, 'AgentAvailable');
  });

  test('after a stopped proxy said Unknown: its agent back is True since the time it became True; gone, False', () => {
    const was = structuredClone(initialized());
    was.status = {
      conditions: [
        {
          type: 'AgentAvailable',
          status: 'Unknown',
          lastUpdateTime: EARLIER,
          lastTransitionTime: EARLIER,
          reason: 'ProxyStopped',
          message: 'No tower proxy serves this cluster: the last replica stopped.',
        },
      ],
    };
    const back = desiredCluster(observed({ cluster: was, agents: 1 }));
    assert.deepEqual(
      back.cluster.status!.conditions!.find((c) => c.type === 'AgentAvailable'),
      {
        type: 'AgentAvailable',
        status: 'True',
        lastUpdateTime: STAMP,
        lastTransitionTime: EARLIER,
        message: 'Agent has connected to proxy successfully.',
      },
    );
    const gone = desiredCluster(observed({ cluster: was, writingSince: NOW - AGENT_GRACE_MS }));
    const cond = gone.cluster.status!.conditions!.find((c) => c.type === 'AgentAvailable')!;
    assert.deepEqual([cond.status, cond.lastTransitionTime], ['False', STAMP]);
  });

  test('no agent: AgentAvailable False once the grace period is over, and only over one already there', () => {
    const was = structuredClone(initialized());
    was.status = {
      conditions: [
        {
          type: 'AgentAvailable',
          status: 'True',
          lastUpdateTime: EARLIER,
          lastTransitionTime: EARLIER,
          reason: 'Old',
          message: 'Agent has connected to proxy successfully.',
        },
      ],
    };
    const inGrace = desiredCluster(observed({ cluster: was, writingSince: NOW - AGENT_GRACE_MS + 1 }));
    assert.equal(inGrace.cluster.status!.conditions!.find((c) => c.type === 'AgentAvailable')!.status, 'True');

    const after = desiredCluster(observed({ cluster: was, writingSince: NOW - AGENT_GRACE_MS }));
    assert.deepEqual(
      after.cluster.status!.conditions!.find((c) => c.type === 'AgentAvailable'),
      {
        type: 'AgentAvailable',
        status: 'False',
        lastUpdateTime: STAMP,
        lastTransitionTime: STAMP,
        message: 'Agent has not connected to proxy.',
      },
    );

    const never = desiredCluster(observed({ writingSince: NOW - 10 * AGENT_GRACE_MS }));
    assert.equal(
      never.cluster.status!.conditions!.find((c) => c.type === 'AgentAvailable'),
      undefined,
    );
  });

  test('the same status with a new message moves lastUpdateTime only', () => {
    const was = structuredClone(initialized());
    was.status = {
      conditions: [
        {
          type: 'AgentAvailable',
          status: 'True',
          lastUpdateTime: EARLIER,
          lastTransitionTime: EARLIER,
          message: 'connected (written by a Go tower)',
        },
      ],
    };
    const d = desiredCluster(observed({ cluster: was, agents: 1, service: service('None') }));
    assert.deepEqual(d.cluster.status!.conditions![0], {
      type: 'AgentAvailable',
      status: 'True',
      lastUpdateTime: STAMP,
      lastTransitionTime: EARLIER,
      message: 'Agent has connected to proxy successfully.',
    });
  });

  test("a load balancer's address: the external endpoint and ExternalAccessReady True", () => {
    const c = initialized('alpha', {}, { externalKubeAPIEnabled: true });
    for (const [ingress, url] of [
      [{ ip: '198.51.100.7' }, 'https://198.51.100.7:6443'],
      [{ ip: '2001:db8::7' }, 'https://[2001:db8::7]:6443'],
      [{ hostname: 'lb.example' }, 'https://lb.example:6443'],
    ] as const) {
      const svc = service('10.96.0.42', { status: { loadBalancer: { ingress: [ingress] } } });
      const address = 'ip' in ingress ? ingress.ip : ingress.hostname;
      assert.equal(loadBalancerAddress(c, svc), address);
      const d = desiredCluster(observed({ cluster: c, service: svc }));
      assert.equal(d.external, address);
      assert.equal(conn(d.cluster).externalKubernetesAPIEndpoint, url);
      assert.deepEqual(d.cluster.status!.conditions![1], {
        type: 'ExternalAccessReady',
        status: 'True',
        lastUpdateTime: STAMP,
        lastTransitionTime: STAMP,
        reason: 'ExternalAccessReady',
        message: `The load balancer's address is ${address}`,
      });
    }
  });

  test('ExternalAccessReady goes False while the address is awaited, and when the load balancer is disabled', () => {
    const ready = {
      type: 'ExternalAccessReady',
      status: 'True',
      lastUpdateTime: EARLIER,
      lastTransitionTime: EARLIER,
      reason: 'ExternalAccessReady',
      message: "The load balancer's address is 198.51.100.7",
    };
    const waiting = initialized('alpha', {}, { externalKubeAPIEnabled: true });
    waiting.status = { conditions: [structuredClone(ready)] };
    assert.deepEqual(desiredCluster(observed({ cluster: waiting })).cluster.status!.conditions![0], {
      type: 'ExternalAccessReady',
      status: 'False',
      lastUpdateTime: STAMP,
      lastTransitionTime: STAMP,
      reason: 'WaitingForAddress',
      message: 'The load balancer has no address yet',
    });
    const disabled = initialized();
    disabled.status = { conditions: [structuredClone(ready)] };
    const svc = service('10.96.0.42', { status: { loadBalancer: { ingress: [{ ip: '198.51.100.7' }] } } });
    const d = desiredCluster(observed({ cluster: disabled, service: svc }));
    assert.equal(d.external, undefined);
    assert.deepEqual(d.cluster.status!.conditions![0], {
      type: 'ExternalAccessReady',
      status: 'False',
      lastUpdateTime: STAMP,
      lastTransitionTime: STAMP,
      reason: 'Disabled',
      message: 'spec.externalKubeAPIEnabled is not true',
    });
    // never enabled: no condition at all
    assert.equal(desiredCluster(observed()).cluster.status!.conditions!.length, 1);
  });
});

describe('when the kubeconfig is reissued', () => {
  let ca: CertificateAuthority;
  let otherCa: CertificateAuthority;
  const server = 'https://10.96.0.42:6443';
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  async function kubeconfig(issuer: CertificateAuthority, trusted: CertificateAuthority, to = server, days = 365) {
    const leaf = await issuer.issueClient('kubernetes-admin', ['system:masters'], days, 'alpha');
    return b64(
      renderKubeconfig({
        cluster: 'alpha',
        server: to,
        caPem: trusted.certPem,
        user: 'kubernetes-admin',
        certPem: leaf.cert,
        keyPem: leaf.key,
      }),
    );
  }

  before(async () => {
    ca = await CertificateAuthority.load(await CertificateAuthority.create(), 'test');
    otherCa = await CertificateAuthority.load(await CertificateAuthority.create('other'), 'test');
  });

  test('a good one is kept; each reason to rewrite is named', async () => {
    const now = Date.now();
    assert.equal(kubeconfigOutdated(await kubeconfig(ca, ca), server, ca.certPem, now), undefined);
    assert.equal(kubeconfigOutdated(undefined, server, ca.certPem, now), 'missing');
    assert.equal(
      kubeconfigOutdated(await kubeconfig(ca, ca, 'https://10.96.0.1:6443'), server, ca.certPem, now),
      'it points to https://10.96.0.1:6443',
    );
    assert.equal(kubeconfigOutdated(await kubeconfig(ca, otherCa), server, ca.certPem, now), 'it trusts another CA');
    assert.equal(
      kubeconfigOutdated(await kubeconfig(otherCa, ca), server, ca.certPem, now),
      "its certificate is not from tower's CA",
    );
    assert.equal(kubeconfigOutdated(b64('clusters: [}'), server, ca.certPem, now), 'it is unreadable');
    assert.equal(kubeconfigOutdated(b64('kind: Config'), server, ca.certPem, now), 'it points to nothing');
  });

  test('a certificate within 30 days of its end is renewed', async () => {
    const good = await kubeconfig(ca, ca, server, 365);
    const day = 24 * 3600_000;
    assert.equal(kubeconfigOutdated(good, server, ca.certPem, Date.now() + 330 * day), undefined);
    assert.equal(kubeconfigOutdated(good, server, ca.certPem, Date.now() + 340 * day), 'its certificate nears expiry');
  });

  test('with an agent connected, an outdated one is asked for with its reason', async () => {
    const c = initialized('alpha', {
      kubernetesAPIEndpoint: server,
      kubeconfig: await kubeconfig(ca, ca, 'https://10.96.0.1:6443'),
    });
    const d = desiredCluster(observed({ cluster: c, agents: 1, caPem: ca.certPem, now: Date.now() }));
    assert.deepEqual(d.kubeconfig, { why: 'it points to https://10.96.0.1:6443', server });
    const fine = initialized('alpha', { kubernetesAPIEndpoint: server, kubeconfig: await kubeconfig(ca, ca) });
    const kept = desiredCluster(observed({ cluster: fine, agents: 1, caPem: ca.certPem, now: Date.now() }));
    assert.equal(kept.kubeconfig, undefined);
  });
});

describe('what the proxy serves', () => {
  const svcNames = [
    'mc-alpha',
    'mc-alpha.kubesphere-system',
    'mc-alpha.kubesphere-system.svc',
    'mc-alpha.kubesphere-system.svc.cluster.local',
  ];

  test('the token, both ports, and the names the certificate carries', () => {
    const c = initialized('alpha', {
      kubernetesAPIEndpoint: 'https://10.96.0.42:6443',
      externalKubernetesAPIEndpoint: 'https://[2001:db8::7]:6443',
    });
    assert.deepEqual(served(c, [], service('10.96.0.42'), 'lb.example'), {
      cluster: {
        name: 'alpha',
        token: TOKEN,
        createdAt: '2026-01-01T00:00:00.000Z',
        revision: '7',
        serve: {
          kubernetesPort: 6123,
          kubespherePort: 16123,
          names: ['10.96.0.42', ...svcNames, '2001:db8::7', 'lb.example'],
        },
      },
    });
    assert.deepEqual(served(initialized(), [], {}, undefined).cluster.serve!.names, svcNames);
    assert.deepEqual(served(initialized(), [], service('None'), undefined).cluster.serve!.names, svcNames);
  });

  test('ports an older Cluster of ours has: the gateway only, and which Cluster has them', () => {
    const c = kubeCluster('beta', { kubernetesAPIServerPort: 6123, kubesphereAPIServerPort: 16999, token: TOKEN });
    c.metadata.creationTimestamp = '2026-02-01T00:00:00Z' as unknown as Date;
    const older = initialized('alpha');
    const result = served(c, [older], service('10.96.0.43'), undefined);
    assert.equal(result.collidesWith, 'alpha');
    assert.equal(result.cluster.serve, undefined);
    assert.equal(result.cluster.token, TOKEN);
    // the older one keeps them
    assert.equal(served(older, [c], service('10.96.0.42'), undefined).collidesWith, undefined);
    // same age: the name decides
    const twin = kubeCluster('aardvark', { kubesphereAPIServerPort: 16123, token: TOKEN });
    assert.equal(served(initialized(), [twin], service('10.96.0.42'), undefined).collidesWith, 'aardvark');
  });

  test('a Cluster not ours or malformed takes no port', () => {
    const foreign = kubeCluster('aardvark', { type: 'direct', kubernetesAPIServerPort: 6123 });
    const malformed = kubeCluster('aardvark', { kubernetesAPIServerPort: 6123, token: 1 as unknown as string });
    const r = served(initialized(), [foreign, malformed], service('10.96.0.42'), undefined);
    assert.equal(r.collidesWith, undefined);
    assert.equal(r.cluster.serve!.kubernetesPort, 6123);
  });

  test('the proxy hears of a new cluster, of a new token or serving, and of nothing else', () => {
    const a: Cluster = served(initialized(), [], service('10.96.0.42'), undefined).cluster;
    assert.equal(servedChange(undefined, a), 'added');
    assert.equal(servedChange(a, { ...a, revision: '8' }), undefined);
    assert.equal(servedChange(a, { ...a, token: 'cd'.repeat(32) }), 'modified');
    assert.equal(servedChange(a, { ...a, serve: undefined }), 'modified');
  });
});
