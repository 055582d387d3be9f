// The gateway's stages on their own, without a process: what each returns for the requests a client
// can send. The end-to-end suites (test/*.test.ts) show the same through the binary and a real member.
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { createSecureContext } from 'node:tls';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Logger } from '../../src/observe/log.ts';
import { actAs } from '../../src/proxy/gateway/act-as.ts';
import { rawStatus } from '../../src/http/status.ts';
import { kubernetesResource, kubernetesVerb, requestBody } from '../../src/proxy/gateway/framing.ts';
import { downstreamHeaders, rawHead } from '../../src/proxy/gateway/headers.ts';
import { Members } from '../../src/proxy/gateway/members.ts';
import { isRefusal } from '../../src/proxy/gateway/refusals.ts';
import { route, type ClientCertificate, type Route, type RouteRules } from '../../src/proxy/gateway/route.ts';
import { ImpersonationCheck, type Identity, type Reviewer } from '../../src/proxy/identity.ts';
import { encodeIdentity, PEER_HEADERS, PeerSignature } from '../../src/proxy/peer-protocol.ts';
import { PeerUpstream } from '../../src/proxy/peers.ts';
import { SessionRegistry } from '../../src/proxy/registry.ts';
import type { AgentSession } from '../../src/tunnel/server.ts';
import { MemberApiserver, MemberKubesphere } from '../../src/proxy/upstream.ts';

const quiet = new Logger({ verbosity: -1, format: 'text' });
const jane: Identity = { user: 'jane', groups: ['viewers'] };
const janeCert: ClientCertificate = { bound: 'alpha', identity: jane };
const signature = new PeerSignature(Buffer.alloc(32, 7));

function rules(over: Partial<RouteRules> = {}): RouteRules {
  return {
    target: 'kubernetes',
    tls: true,
    allowUnboundCertificates: false,
    actsAsCertificate: (t) => t === 'kubernetes',
    knows: (name) => name === 'alpha' || name === 'beta',
    log: quiet,
    ...over,
  };
}

const head = (url: string, headers: Record<string, string> = {}, method = 'GET') => ({ method, url, headers });

/** a request as Node's server hands it over: lower-case names, and every value of each */
function request(method: string, url: string, raw: [string, string][] = []): IncomingMessage {
  const headers: Record<string, string | string[]> = {};
  const headersDistinct: Record<string, string[]> = {};
  for (const [k, v] of raw) {
    const name = k.toLowerCase();
    (headersDistinct[name] ??= []).push(v);
    const prev = headers[name];
    headers[name] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : `${prev}, ${v}`;
  }
  return { method, url, headers, headersDistinct, rawHeaders: raw.flat() } as unknown as IncomingMessage;
}

let sessions = 0;
function session(config: Partial<AgentSession['config']> = {}): AgentSession {
  return Object.assign(new EventEmitter(), {
    id: ++sessions,
    name: 'alpha',
    closed: false,
    config: { kubernetesSvcHost: 'kubernetes.default.svc:443', kubesphereSvcHost: '', ...config },
  }) as unknown as AgentSession;
}

test('route: /clusters/<name>/ names the cluster, the rest is the path the member sees, query and all', () => {
  const r = route(head('/clusters/alpha/api/v1/pods?watch=1'), janeCert, rules());
  assert.deepEqual(r, { cluster: 'alpha', path: '/api/v1/pods?watch=1', target: 'kubernetes', identity: jane });
  assert.deepEqual(route(head('/clusters/alpha'), janeCert, rules()), {
    cluster: 'alpha',
    path: '/',
    target: 'kubernetes',
    identity: jane,
  });
});

test('route: each refusal, and the order in which they are decided', () => {
  const status = (r: ReturnType<typeof route>) => (isRefusal(r) ? r.status : 200);
  assert.equal(
    status(
      route(head('/clusters/alpha/api'), { problem: 'no certificate', bound: undefined, identity: undefined }, rules()),
    ),
    401,
  );
  assert.equal(
    status(route(head('/api'), undefined, rules({ tls: false }))),
    404,
    'no route without a bound certificate',
  );
  assert.equal(status(route(head('/clusters/..%2fx/api'), janeCert, rules())), 400);
  // a bound certificate learns nothing of other clusters: the 403 comes before the store is asked
  let asked = false;
  const other = route(head('/clusters/gamma/api'), janeCert, rules({ knows: () => ((asked = true), false) }));
  assert.equal(status(other), 403);
  assert.equal(asked, false);
  const unbound: ClientCertificate = { bound: undefined, identity: jane };
  assert.equal(status(route(head('/clusters/alpha/api'), unbound, rules())), 403);
  assert.equal(status(route(head('/clusters/alpha/api'), unbound, rules({ allowUnboundCertificates: true }))), 200);
  assert.equal(status(route(head('/clusters/zeta/api'), { bound: 'zeta', identity: jane }, rules())), 404);
  const nameless: ClientCertificate = { bound: 'alpha', identity: 'the client certificate must have exactly one CN' };
  const r = route(head('/clusters/alpha/api'), nameless, rules());
  assert.ok(isRefusal(r) && r.status === 403 && r.message.includes('exactly one CN'));
});

test('route: a bound certificate reaches its cluster without the path (kubectl get --raw /version)', () => {
  assert.deepEqual(route(head('/version'), janeCert, rules()), {
    cluster: 'alpha',
    path: '/version',
    target: 'kubernetes',
    identity: jane,
  });
});

test("route: a cluster's own port serves its cluster at the root; ks-apiserver requests act as no certificate", () => {
  const r = route(head('/clusters/beta/api'), undefined, rules({ cluster: 'alpha', tls: false, target: 'kubesphere' }));
  assert.deepEqual(r, { cluster: 'alpha', path: '/clusters/beta/api', target: 'kubesphere', identity: undefined });
});

test('route: what a replica forwarded goes by its signed headers, and nothing unsigned does', () => {
  const replica: ClientCertificate = { bound: undefined, identity: undefined, replica: 'r2' };
  const identity = encodeIdentity(jane);
  const signed = (over: Record<string, string> = {}) => ({
    [PEER_HEADERS.cluster]: 'alpha',
    [PEER_HEADERS.target]: 'kubernetes',
    [PEER_HEADERS.identity]: identity,
    [PEER_HEADERS.signature]: signature.sign({
      method: 'GET',
      path: '/api',
      cluster: 'alpha',
      target: 'kubernetes',
      identity,
    }),
    ...over,
  });
  assert.deepEqual(route(head('/api', signed()), replica, rules({ signature })), {
    cluster: 'alpha',
    path: '/api',
    target: 'kubernetes',
    identity: jane,
    fromPeer: 'r2',
  });
  const refused = (h: Record<string, string>, method = 'GET') => {
    const r = route(head('/api', h, method), replica, rules({ signature }));
    return isRefusal(r) ? r.status : 200;
  };
  // another cluster, identity or method than the one signed, or no signature at all
  assert.equal(refused(signed({ [PEER_HEADERS.cluster]: 'beta' })), 403);
  assert.equal(
    refused(signed({ [PEER_HEADERS.identity]: encodeIdentity({ user: 'admin', groups: ['system:masters'] }) })),
    403,
  );
  assert.equal(refused(signed(), 'DELETE'), 403);
  const { [PEER_HEADERS.signature]: _, ...unsigned } = signed();
  assert.equal(refused(unsigned), 403);
  assert.equal(refused(signed({ [PEER_HEADERS.target]: 'other' })), 400);
});

test('framing: one way to read a body, or why not', () => {
  assert.deepEqual(requestBody([]), { kind: 'none' });
  assert.deepEqual(requestBody(['Content-Length', '0']), { kind: 'none' });
  assert.deepEqual(requestBody(['content-length', '12']), { kind: 'length', bytes: 12 });
  assert.deepEqual(requestBody(['Content-Length', '12', 'Content-Length', '12']), { kind: 'length', bytes: 12 });
  assert.deepEqual(requestBody(['Transfer-Encoding', ' Chunked ']), { kind: 'chunked' });
  for (const raw of [
    ['Content-Length', '12', 'Transfer-Encoding', 'chunked'],
    ['Transfer-Encoding', 'chunked', 'Transfer-Encoding', 'chunked'],
    ['Transfer-Encoding', 'gzip, chunked'],
    ['Content-Length', '12', 'Content-Length', '13'],
    ['Content-Length', '-1'],
    ['Content-Length', '1e3'],
  ])
    assert.equal(typeof requestBody(raw), 'string', raw.join(' '));
});

test('verb: as kube-apiserver names it', () => {
  const cases: [string, string, string][] = [
    ['GET', '/api/v1/namespaces/a/pods', 'list'],
    ['GET', '/api/v1/namespaces/a/pods/p', 'get'],
    ['GET', '/api/v1/pods?watch=true', 'watch'],
    ['GET', '/apis/apps/v1/deployments?labelSelector=x&watch=1', 'watch'],
    ['GET', '/version', 'get'],
    // discovery names no resource: a list of nothing is the method's name
    ['GET', '/api/v1?timeout=30s', 'get'],
    ['GET', '/apis/apps/v1', 'get'],
    ['POST', '/api/v1/namespaces/a/pods', 'create'],
    ['PUT', '/api/v1/namespaces/a/pods/p', 'update'],
    ['PATCH', '/api/v1/namespaces/a/pods/p', 'patch'],
    ['DELETE', '/api/v1/namespaces/a/pods', 'deletecollection'],
    ['DELETE', '/api/v1/namespaces/a/pods/p', 'delete'],
    ['OPTIONS', '/api', 'options'],
  ];
  for (const [method, url, verb] of cases) assert.equal(kubernetesVerb(method, url), verb, `${method} ${url}`);
});

const certRoute: Route = { cluster: 'alpha', path: '/api/v1/pods', target: 'kubernetes', identity: jane };
const clientSaysWho: [string, string][] = [
  ['Authorization', 'Bearer client-token'],
  ['Impersonate-User', 'admin'],
  ['Impersonate-Group', 'system:masters'],
  ['X-Remote-User', 'admin'],
  ['Sec-WebSocket-Protocol', 'base64url.bearer.authorization.k8s.io.dG9rZW4, v4.channel.k8s.io'],
  ['X-Tower-Peer-Cluster', 'beta'],
  ['Connection', 'keep-alive, X-Drop-Me'],
  ['X-Drop-Me', '1'],
  ['Transfer-Encoding', 'chunked'],
  ['Expect', '100-continue'],
  ['Accept', 'application/json'],
];

test("headers: a member's kube-apiserver hears who the certificate says, never the client's word", () => {
  const member = new MemberApiserver(session({ bearerToken: Buffer.from('agent-token') }));
  const out = member.headers(request('GET', '/x', clientSaysWho), certRoute, jane);
  assert.deepEqual(out, {
    'sec-websocket-protocol': 'v4.channel.k8s.io',
    accept: 'application/json',
    host: 'kubernetes.default.svc',
    authorization: 'Bearer agent-token',
    'impersonate-user': 'jane',
    'impersonate-group': ['viewers'],
  });
  member.pool.destroy();
});

test("headers: ks-apiserver hears the client's Authorization; the agent's identity mode keeps only its own", () => {
  const s = session({
    kubesphereSvcHost: 'ks-apiserver.kubesphere-system.svc',
    bearerToken: Buffer.from('agent-token'),
  });
  const ks = new MemberKubesphere(s);
  const plain: Route = { cluster: 'alpha', path: '/', target: 'kubesphere' };
  const out = ks.headers(
    request('GET', '/x', [
      ['Authorization', 'Bearer user'],
      ['Accept', '*/*'],
    ]),
    plain,
    undefined,
  );
  assert.deepEqual(out, { authorization: 'Bearer user', accept: '*/*', host: 'ks-apiserver.kubesphere-system.svc' });
  const kube = new MemberApiserver(s);
  const agentMode = kube.headers(
    request('GET', '/x', [['Authorization', 'Bearer user']]),
    { ...plain, target: 'kubernetes' },
    undefined,
  );
  assert.deepEqual(agentMode, { host: 'kubernetes.default.svc', authorization: 'Bearer agent-token' });
  ks.pool.destroy();
  kube.pool.destroy();
});

test('headers: a replica hears the client less its credentials, and a signature over what decides the request', () => {
  const replica = { id: 'r2', address: '127.0.0.2:8443', draining: false };
  const peer = new PeerUpstream(replica, 'kubernetes', createSecureContext({}), signature);
  const out = peer.headers(request('GET', '/clusters/alpha/api/v1/pods', clientSaysWho), certRoute);
  assert.equal(out.authorization, undefined);
  assert.equal(out['x-remote-user'], undefined);
  assert.equal(out['x-drop-me'], undefined);
  assert.equal(out['transfer-encoding'], undefined);
  // the client's own impersonation goes on, for that replica to judge
  assert.equal(out['impersonate-user'], 'admin');
  assert.equal(out.host, '127.0.0.2:8443');
  assert.equal(out[PEER_HEADERS.cluster], 'alpha');
  const signed = {
    method: 'GET',
    path: '/api/v1/pods',
    cluster: 'alpha',
    target: 'kubernetes',
    identity: encodeIdentity(jane),
  };
  assert.equal(out[PEER_HEADERS.identity], signed.identity);
  assert.equal(signature.problem(out[PEER_HEADERS.signature] as string, signed), undefined);
  assert.ok(signature.problem(out[PEER_HEADERS.signature] as string, { ...signed, path: '/api/v1/secrets' }));
  peer.pool.destroy();
});

test("members: a retry goes to the next agent with that agent's own host and credentials", async () => {
  const registry = new SessionRegistry();
  const one = session({ kubernetesSvcHost: '10.0.0.1:6443', bearerToken: Buffer.from('one') });
  const two = session({ kubernetesSvcHost: '10.0.0.2:6443', bearerToken: Buffer.from('two') });
  registry.add(one);
  registry.add(two);
  const members = new Members({ registry });
  const way = members.local(certRoute);
  assert.ok(way && !isRefusal(way));
  const req = request('GET', '/x', []);
  const first = way.current.headers(req, certRoute, jane);
  const next = await way.next();
  assert.ok(next);
  const second = next.headers(req, certRoute, jane);
  assert.notEqual(first.host, second.host);
  assert.deepEqual([first, second].map((h) => [h.host, h.authorization]).sort(), [
    ['10.0.0.1:6443', 'Bearer one'],
    ['10.0.0.2:6443', 'Bearer two'],
  ]);
  assert.equal(way.tried, 2);
  assert.equal(await way.next(), undefined, 'each agent once');
  one.emit('close');
  two.emit('close');
});

test(
  'members: none here and no replicas is a 503, to retry only while an agent may be reconnecting, and text for ' +
    'discovery; an agent that announced no ks-apiserver a 502',
  async () => {
    const registry = new SessionRegistry();
    const members = new Members({ registry });
    assert.equal(members.local(certRoute), undefined);
    // never connected: waiting cannot help
    const none = await members.elsewhere(certRoute, 'GET');
    assert.ok(isRefusal(none) && none.status === 503 && none.retryAfter === undefined && !none.text);
    for (const path of ['/api', '/api/v1', '/apis', '/apis/apps', '/apis/apps/v1?timeout=32s', '/openapi/v2']) {
      const d = await members.elsewhere({ ...certRoute, path }, 'GET');
      assert.ok(isRefusal(d) && d.status === 502 && d.text, path);
      assert.match(d.message, /^tower gateway: cluster "alpha" has no agent connected to tower/);
    }
    for (const [path, method] of [
      ['/api/v1/namespaces', 'GET'],
      ['/apis/apps/v1/deployments', 'GET'],
      ['/api', 'POST'],
    ]) {
      const r = await members.elsewhere({ ...certRoute, path: path! }, method!);
      assert.ok(isRefusal(r) && r.status === 503 && !r.text, `${method} ${path}`);
    }
    const s = session();
    registry.add(s);
    const ks = members.local({ cluster: 'alpha', path: '/', target: 'kubesphere' });
    assert.ok(ks && isRefusal(ks) && ks.status === 502);
    s.emit('close');
    // an agent that just left may come back: clients retry, discovery included
    for (const path of ['/api', '/api/v1/namespaces']) {
      const r = await members.elsewhere({ ...certRoute, path }, 'GET');
      assert.ok(isRefusal(r) && r.status === 503 && r.retryAfter === 1 && !r.text, path);
    }
  },
);

test('identity: as the certificate, or as asked once the member allowed it', async () => {
  const verdicts: string[] = [];
  const check = {
    denied: async (_r: Reviewer, _c: string, _w: Identity, wanted: { user: string }) => {
      verdicts.push(wanted.user);
      if (wanted.user === 'unknown') throw new Error('no answer');
      return wanted.user === 'admin' ? 'user "jane" may not impersonate user "admin"' : undefined;
    },
  } as unknown as ImpersonationCheck;
  const member = new MemberApiserver(session());
  const as = (raw: [string, string][], upstream: { reviewer: Reviewer | undefined } = member) =>
    actAs(request('GET', '/x', raw), certRoute, upstream as MemberApiserver, check);
  assert.deepEqual(await as([]), { actAs: jane });
  assert.deepEqual(await as([['Impersonate-User', 'bob']]), {
    actAs: { user: 'bob', groups: [], uid: undefined, extra: [] },
  });
  const status = async (raw: [string, string][]) => {
    const r = await as(raw);
    return isRefusal(r) ? r.status : 200;
  };
  assert.equal(await status([['Impersonate-User', 'admin']]), 403);
  assert.equal(await status([['Impersonate-User', 'unknown']]), 502);
  assert.equal(await status([['Impersonate-Group', 'g']]), 400, 'a group without a user');
  // a replica settles it itself: nothing is asked here
  const asked = verdicts.length;
  assert.deepEqual(await as([['Impersonate-User', 'admin']], { reviewer: undefined }), { actAs: undefined });
  assert.equal(verdicts.length, asked);
  member.pool.destroy();
});

test("audit ID: every upstream hears tower's, never the client's; only a replica's signed request hands one on", () => {
  const id = '6f1c2b1e-8d3a-4c52-9e7f-0a1b2c3d4e5f';
  const routed: Route = { ...certRoute, auditId: id };
  // every copy the client sent, whatever its case, and its try at the replicas' own header
  const client = request('GET', '/x', [
    ['Audit-ID', 'chosen-by-client'],
    ['audit-id', 'another'],
    ['X-Tower-Peer-Audit-Id', '00000000-0000-4000-8000-000000000000'],
  ]);
  const s = session({ kubesphereSvcHost: 'ks-apiserver.kubesphere-system.svc' });
  const member = new MemberApiserver(s);
  const ks = new MemberKubesphere(s);
  assert.equal(member.headers(client, routed, jane)['audit-id'], id);
  assert.equal(ks.headers(client, { ...routed, target: 'kubesphere' }, undefined)['audit-id'], id);
  const plain = member.headers(client, certRoute, jane);
  assert.equal(plain['audit-id'], undefined, "no ID of tower's, and none of the client's");
  const peer = new PeerUpstream(
    { id: 'r2', address: '127.0.0.2:8443', draining: false },
    'kubernetes',
    createSecureContext({}),
    signature,
  );
  const toPeer = peer.headers(client, routed);
  assert.equal(toPeer[PEER_HEADERS.auditId], id);
  assert.equal(toPeer['audit-id'], undefined);
  for (const p of [member, ks, peer]) p.pool.destroy();

  const replica: ClientCertificate = { bound: undefined, identity: undefined, replica: 'r2' };
  const forwarded = (auditId: string) => ({
    [PEER_HEADERS.cluster]: 'alpha',
    [PEER_HEADERS.target]: 'kubernetes',
    [PEER_HEADERS.identity]: encodeIdentity(jane),
    [PEER_HEADERS.auditId]: auditId,
    [PEER_HEADERS.signature]: signature.sign({
      method: 'GET',
      path: '/api',
      cluster: 'alpha',
      target: 'kubernetes',
      identity: encodeIdentity(jane),
    }),
  });
  const fromPeer = route(head('/api', forwarded(id)), replica, rules({ signature }));
  assert.ok(!isRefusal(fromPeer));
  assert.equal(fromPeer.auditId, id);
  const odd = route(head('/api', forwarded('chosen-by-client')), replica, rules({ signature }));
  assert.ok(!isRefusal(odd));
  assert.equal(odd.auditId, undefined, 'not one tower makes: the gateway makes its own');
  // a user's certificate: the header is nobody's word
  const user = route(head('/clusters/alpha/api', { [PEER_HEADERS.auditId]: id }), janeCert, rules());
  assert.ok(!isRefusal(user));
  assert.equal(user.auditId, undefined);
});

test("audit ID: the client's answer carries tower's, in place of the member's, however it is written", () => {
  const id = '6f1c2b1e-8d3a-4c52-9e7f-0a1b2c3d4e5f';
  const answer = {
    statusCode: 403,
    statusMessage: 'Forbidden',
    headers: { 'audit-id': 'members-own', 'content-type': 'application/json' },
    rawHeaders: ['Audit-Id', 'members-own', 'Content-Type', 'application/json'],
  } as unknown as IncomingMessage;
  assert.deepEqual(downstreamHeaders(answer, id), { 'Audit-ID': id, 'content-type': 'application/json' });
  const raw = rawHead(answer, id, true);
  assert.deepEqual(
    raw.split('\r\n').filter((l) => /^audit-id:/i.test(l)),
    [`Audit-ID: ${id}`],
  );
  assert.match(rawStatus({ status: 403, message: 'no' }, id), new RegExp(`\r\nAudit-ID: ${id}\r\n`));
  assert.doesNotMatch(rawStatus({ status: 403, message: 'no' }), /Audit-ID/i);
});

test('resource: as kube-apiserver names it in its audit events (objectRef resource/subresource, namespace)', () => {
  const cases: [string, { resource?: string; namespace?: string }][] = [
    ['/api/v1/namespaces/a/pods?limit=500', { resource: 'pods', namespace: 'a' }],
    ['/api/v1/namespaces/a/pods/p/exec?command=true', { resource: 'pods/exec', namespace: 'a' }],
    ['/apis/apps/v1/namespaces/a/deployments/d/scale', { resource: 'deployments/scale', namespace: 'a' }],
    ['/api/v1/pods?watch=1', { resource: 'pods', namespace: undefined }],
    ['/api/v1/watch/namespaces/a/pods', { resource: 'pods', namespace: 'a' }],
    ['/api/v1/namespaces', { resource: 'namespaces', namespace: undefined }],
    ['/api/v1/namespaces/a', { resource: 'namespaces', namespace: 'a' }],
    ['/api/v1/namespaces/a/finalize', { resource: 'namespaces/finalize', namespace: 'a' }],
    ['/apis/rbac.authorization.k8s.io/v1/clusterroles/x', { resource: 'clusterroles', namespace: undefined }],
    ['/api/v1', {}],
    ['/apis/apps/v1?timeout=30s', {}],
    ['/version', {}],
    ['/kapis/resources.kubesphere.io/v1alpha3/namespaces', {}],
  ];
  for (const [url, want] of cases) {
    const got = kubernetesResource(url);
    assert.deepEqual(
      { resource: got.resource, namespace: got.namespace },
      { resource: want.resource, namespace: want.namespace },
      url,
    );
  }
});
