// A request whose agent dies under it, with another agent of the cluster connected. The gateway may
// send it again through the other agent, with that agent's own credentials: a safe request (GET)
// whenever, another (DELETE, POST) only when it never left for the member. What the member receives
// is asserted at its side of the wire (found by a red team: a DELETE ran twice).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { after, before, test } from 'node:test';
import { credentialsOf, READ_TIMEOUT_MS, tlsConnector } from './support/framing-harness.ts';
import { ResponseReader } from './support/raw-http.ts';
import { RecordingUpstream, type MemberAuth } from './support/recording-upstream.ts';
import { Stack } from './support/stack.ts';
import type { TowerProcess } from './support/tower.ts';

const CLUSTER = 'twice';
/** the member holds its answer this long: the agent that carries the request is killed meanwhile */
const ANSWER_DELAY_MS = 4_000;

let stack: Stack;
let recorder: RecordingUpstream;
let token = '';
let connect: () => Promise<Duplex>;
/** one agent proves itself to the member with a token, the other with a certificate: the member tells them apart */
const agents = new Map<MemberAuth, TowerProcess>();
let probes = 0;

function startAgent(auth: 'token' | 'cert'): TowerProcess {
  const kubeconfig = recorder.writeKubeconfig(join(stack.dataDir, `${auth}.kubeconfig`), auth);
  const agent = stack.startAgent(CLUSTER, token, kubeconfig, ['--kubesphere-service', recorder.ksHostPort]);
  agents.set(auth, agent);
  return agent;
}

before(async () => {
  stack = new Stack();
  recorder = await RecordingUpstream.start();
  await stack.startProxy();
  token = (await stack.token(CLUSTER)).token;
  await Promise.all([
    startAgent('token').waitFor(/connected to proxy/),
    startAgent('cert').waitFor(/connected to proxy/),
  ]);
  const creds = credentialsOf(await stack.kubeconfig(CLUSTER, ['--user', 'jane', '--group', 'viewers']));
  connect = tlsConnector(creds.server.hostname, Number(creds.server.port), creds);
});

after(async () => {
  await stack?.close();
  await recorder?.close();
});

/** Sends `method` without a body, kills the agent that carried it once the member has it; what came of it. */
async function underDyingAgent(method: string): Promise<{ status: number | undefined; arrivals: MemberAuth[] }> {
  const probe = `retry-${++probes}`;
  const socket = await connect();
  const answers = new ResponseReader(socket);
  socket.write(
    `${method} /clusters/${CLUSTER}/api/v1/namespaces/default/pods/victim?probe=${probe}&ms=${ANSWER_DELAY_MS} ` +
      `HTTP/1.1\r\nHost: gateway\r\n\r\n`,
  );
  let carrier: MemberAuth | undefined;
  for (let i = 0; i < 100 && !carrier; i++) {
    await new Promise((r) => setTimeout(r, 50));
    carrier = recorder.of(probe)[0]?.auth;
  }
  assert.ok(carrier === 'token' || carrier === 'cert', `${method} reached the member through an agent`);
  const mark = stack.proxy!.output.length;
  await agents.get(carrier)!.stop('SIGKILL');
  const answer = await answers.next(method, READ_TIMEOUT_MS + ANSWER_DELAY_MS);
  socket.destroy();
  // the other agent takes its place for the next case
  const back = startAgent(carrier as 'token' | 'cert');
  await stack.proxy!.waitFor(/agent disconnected/, 20_000, mark);
  await back.waitFor(/connected to proxy/);
  return {
    status: answer.kind === 'answer' ? answer.answer.status : undefined,
    arrivals: recorder.of(probe).map((r) => r.auth),
  };
}

test('a GET whose agent dies is sent again through the other agent, with its credentials', async () => {
  const { status, arrivals } = await underDyingAgent('GET');
  assert.equal(status, 200);
  assert.equal(arrivals.length, 2, 'the member got it through each agent');
  assert.notEqual(arrivals[0], arrivals[1], "each time with that agent's own credentials");
});

for (const method of ['DELETE', 'POST']) {
  test(`a ${method} the member has already received is not sent again when its agent dies: a 502`, async () => {
    const { status, arrivals } = await underDyingAgent(method);
    assert.equal(arrivals.length, 1, `the member got the ${method} once (${arrivals.join(', ')})`);
    assert.equal(status, 502);
  });
}
