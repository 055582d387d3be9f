// What another replica answers is a stranger's word too: a replica that answers garbage, claims
// another id, sends strings for counts, a huge body or nothing at all counts as holding no agent,
// and the honest replica beside it is still found.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:https';
import { after, before, test } from 'node:test';
import { Logger } from '../src/observe/log.ts';
import { CertificateAuthority } from '../src/pki/ca.ts';
import { Peers } from '../src/proxy/peers.ts';
import { PEER_URI_PREFIX, PeerSignature } from '../src/proxy/peer-protocol.ts';
import type { Replica, Replicas } from '../src/replicas.ts';

const servers: Server[] = [];
let ca: CertificateAuthority;

/** a replica's gateway that answers /peer/v1/sessions with `answer` (undefined: never answers) */
async function peer(answer: ((cluster: string) => string) | undefined): Promise<string> {
  const cert = await ca.issueServer(['127.0.0.1']);
  const server = createServer({ ...cert, ca: ca.certPem, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    if (!answer) return;
    const cluster = new URL(req.url ?? '/', 'https://x').searchParams.get('cluster') ?? '';
    res.writeHead(200, { 'content-type': 'application/json' }).end(answer(cluster));
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `127.0.0.1:${(server.address() as { port: number }).port}`;
}

function replicasOf(others: Replica[]): Replicas {
  const self = { id: 'self', address: '127.0.0.1:1', draining: false };
  return {
    self,
    start: async () => {},
    live: () => [self, ...others],
    onChange: () => {},
    drain: async () => {},
    close: async () => {},
  };
}

before(async () => {
  ca = await CertificateAuthority.load(await CertificateAuthority.create('peers-test'), 'test');
});

after(() => {
  for (const s of servers) {
    s.close();
    s.closeAllConnections();
  }
});

test(
  'hostile replicas count as holding no agent; ' +
    'the honest one is still found, a silent one ends at the lookup deadline',
  async () => {
    const honest = await peer((c) => JSON.stringify({ server: 'honest', draining: false, sessions: { [c]: 1 } }));
    const hostile: Replica[] = [
      {
        id: 'strings',
        address: await peer((c) => JSON.stringify({ server: 'strings', draining: false, sessions: { [c]: '1' } })),
        draining: false,
      },
      {
        id: 'impostor',
        address: await peer((c) => JSON.stringify({ server: 'someone-else', draining: false, sessions: { [c]: 5 } })),
        draining: false,
      },
      { id: 'garbage', address: await peer(() => 'not json'), draining: false },
      { id: 'null', address: await peer(() => 'null'), draining: false },
      { id: 'huge', address: await peer(() => 'x'.repeat(3 * 1024 * 1024)), draining: false },
      {
        id: 'negative',
        address: await peer((c) => JSON.stringify({ server: 'negative', draining: false, sessions: { [c]: -3 } })),
        draining: false,
      },
      { id: 'silent', address: await peer(undefined), draining: false },
    ];
    const client = await ca.issueClient('tower-replica:self', [], 1, undefined, [`${PEER_URI_PREFIX}self`]);
    const quiet = new Logger();
    const alone = new Peers({
      replicas: replicasOf(hostile),
      tls: { ...client, caPem: ca.certPem },
      signature: new PeerSignature(ca.secret('test')),
      log: quiet,
    });
    // the silent one ends at the lookup's own deadline, or this would not return
    assert.equal(await alone.sessionsElsewhere('alpha'), 0);
    assert.equal(await alone.find('alpha'), undefined);
    const withHonest = new Peers({
      replicas: replicasOf([...hostile, { id: 'honest', address: honest, draining: false }]),
      tls: { ...client, caPem: ca.certPem },
      signature: new PeerSignature(ca.secret('test')),
      log: quiet,
    });
    assert.equal((await withHonest.find('alpha'))?.id, 'honest');
    assert.equal(await withHonest.sessionsElsewhere('alpha'), 1);
    alone.close();
    withHonest.close();
  },
);
