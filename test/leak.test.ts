import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parse } from 'yaml';
import { Stack } from './support/stack.ts';
import { TestUpstream } from './support/upstream.ts';

const REQUESTS = 5000;
const CONCURRENCY = 8;

let stack: Stack;
let upstream: TestUpstream;

before(async () => {
  upstream = await TestUpstream.start();
  stack = new Stack();
  // -v 3: the proxy says when it has trimmed malloc (see settledRssMiB)
  await stack.startProxy(['-v', '3']);
  const { token } = await stack.token('busy');
  await stack
    .startAgent('busy', token, upstream.writeKubeconfig(join(stack.dataDir, 'u.kubeconfig'), 'token'))
    .waitFor(/connected to proxy/);
});

after(async () => {
  await stack?.close();
  await upstream?.close();
});

const FRESH_WARMUP = 6000;
/** measured in two halves: what a leak costs grows with every connection, what the allocator keeps does not */
const FRESH_MEASURED = 10_000;
/** Before the gateway checked client certificates itself, each verified one kept about 4 KiB: 20 MiB a half. */
const FRESH_GROWTH_LIMIT_MIB = 8;
/** the proxy checks every 30 s whether to trim malloc: by then one check has passed */
const TRIM_CHECK_MS = 35_000;

test(
  `${FRESH_MEASURED} fresh mutually authenticated connections leave no native memory behind ` +
    `(RSS grows < ${FRESH_GROWTH_LIMIT_MIB} MiB over the last ${FRESH_MEASURED / 2}, after ${FRESH_WARMUP} of warm-up)`,
  async () => {
    const kc = parse(readFileSync(await stack.kubeconfig('busy'), 'utf8'));
    const user = kc.users[0].user;
    const tls = {
      ca: Buffer.from(kc.clusters[0].cluster['certificate-authority-data'], 'base64'),
      cert: Buffer.from(user['client-certificate-data'], 'base64'),
      key: Buffer.from(user['client-key-data'], 'base64'),
    };
    // a new connection, TLS handshake and client certificate for every request, as kubectl invocations make
    const get = () =>
      new Promise<number>((resolve, reject) => {
        const req = request(
          { host: '127.0.0.1', port: stack.gatewayPort, path: '/clusters/busy/api', agent: false, ...tls },
          (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode!));
          },
        );
        req.on('error', reject);
        req.end();
      });
    const run = async (n: number) => {
      let done = 0;
      await Promise.all(
        Array.from({ length: CONCURRENCY }, async () => {
          while (done < n) {
            done++;
            assert.equal(await get(), 200);
          }
        }),
      );
    };
    const rssMiB = () =>
      Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${stack.proxy!.pid}/status`, 'utf8'))![1]) / 1024;
    // What stays, not what a burst left for malloc to hand back: each reading is taken once the proxy's
    // next trim check has passed (it trims when RSS grew 2 MiB since the last). Read at any moment, a
    // trim between two readings moved their difference by up to 30 MiB either way. And on a busy
    // machine glibc's arenas keep more after the warm-up (up to 27 MiB over the first 10 000, with the
    // V8 heap unchanged), once: a leak grows in both halves alike, so the second half is what is judged.
    const settledRssMiB = async () => {
      const mark = stack.proxy!.output.length;
      await stack.proxy!.waitFor(/malloc trimmed/, TRIM_CHECK_MS, mark).catch(() => undefined);
      return rssMiB();
    };
    await run(FRESH_WARMUP);
    const before = await settledRssMiB();
    await run(FRESH_MEASURED / 2);
    const middle = await settledRssMiB();
    await run(FRESH_MEASURED / 2);
    const grown = (await settledRssMiB()) - middle;
    assert.ok(
      grown < FRESH_GROWTH_LIMIT_MIB,
      `the proxy's RSS grew ${grown.toFixed(1)} MiB over the last ${FRESH_MEASURED / 2} fresh connections ` +
        `(${((grown * 1024) / (FRESH_MEASURED / 2)).toFixed(2)} KiB each; ${(middle - before).toFixed(1)} MiB ` +
        `over the first ${FRESH_MEASURED / 2})`,
    );
  },
);

test(
  `${REQUESTS} requests over reused channels leave no listener behind, ` + `and SIGTERM then ends the proxy at once`,
  async () => {
    const kc = parse(readFileSync(await stack.kubeconfig('busy'), 'utf8'));
    const user = kc.users[0].user;
    const agent = new Agent({
      keepAlive: true,
      maxSockets: CONCURRENCY,
      ca: Buffer.from(kc.clusters[0].cluster['certificate-authority-data'], 'base64'),
      cert: Buffer.from(user['client-certificate-data'], 'base64'),
      key: Buffer.from(user['client-key-data'], 'base64'),
    });
    const get = () =>
      new Promise<number>((resolve, reject) => {
        const req = request(
          { host: '127.0.0.1', port: stack.gatewayPort, path: '/clusters/busy/api', agent },
          (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode!));
          },
        );
        req.on('error', reject);
        req.end();
      });
    let done = 0;
    const worker = async () => {
      while (done < REQUESTS) {
        done++;
        assert.equal(await get(), 200);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    agent.destroy();
    // a listener added per request on a reused channel shows as Node's warning once 10 pile up on one
    assert.doesNotMatch(stack.proxy!.output, /MaxListenersExceededWarning|memory leak/);
    const stopped = Date.now();
    assert.equal(await stack.proxy!.stop('SIGTERM'), 0);
    const took = Date.now() - stopped;
    assert.ok(took < 5000, `SIGTERM took ${took} ms to end the proxy`);
  },
);

test(
  'what a burst of connections freed goes back to the system: the proxy trims ' +
    'malloc within 30 s, and RSS falls; so does the agent after 64 requests at once',
  async () => {
    const own = new Stack();
    try {
      const proxy = await own.startProxy(['-v', '3']);
      const { token } = await own.token('trim');
      const agent = own.startAgent(
        'trim',
        token,
        upstream.writeKubeconfig(join(own.dataDir, 't.kubeconfig'), 'token'),
        ['-v', '3'],
      );
      await agent.waitFor(/connected to proxy/);
      // 64 requests at once through the agent: 64 channels, each an upstream TLS connection there
      const kc = parse(readFileSync(await own.kubeconfig('trim'), 'utf8'));
      const user = kc.users[0].user;
      const tls = {
        ca: Buffer.from(kc.clusters[0].cluster['certificate-authority-data'], 'base64'),
        cert: Buffer.from(user['client-certificate-data'], 'base64'),
        key: Buffer.from(user['client-key-data'], 'base64'),
      };
      const answered = await Promise.all(
        Array.from(
          { length: 64 },
          () =>
            new Promise<number>((resolve, reject) => {
              const req = request(
                { host: '127.0.0.1', port: own.gatewayPort, path: '/clusters/trim/api', agent: false, ...tls },
                (res) => {
                  res.resume();
                  res.on('end', () => resolve(res.statusCode!));
                },
              );
              req.on('error', reject);
              req.end();
            }),
        ),
      );
      assert.ok(
        answered.every((c) => c === 200),
        `answers: ${[...new Set(answered)].join(', ')}`,
      );
      // 2 000 TLS connections without a client certificate, 8 at a time: each is refused, and freed
      const refused = () =>
        new Promise<void>((resolve) => {
          const req = request(
            {
              host: '127.0.0.1',
              port: own.gatewayPort,
              path: '/clusters/trim/api',
              agent: false,
              rejectUnauthorized: false,
            },
            (res) => {
              res.resume();
              res.on('end', resolve);
            },
          );
          req.on('error', () => resolve());
          req.end();
        });
      let left = 2000;
      await Promise.all(
        Array.from({ length: CONCURRENCY }, async () => {
          while (left-- > 0) await refused();
        }),
      );
      const from = proxy.output.length;
      const m = await proxy.waitFor(
        /malloc trimmed released=(true|false) ms=[\d.]+ rssBeforeMiB=([\d.]+) rssAfterMiB=([\d.]+)/,
        40_000,
        from,
      );
      assert.equal(m[1], 'true', 'the first trim after the burst handed pages back');
      assert.ok(Number(m[3]) < Number(m[2]), `RSS fell: ${m[2]} → ${m[3]} MiB`);
      // the agent's check: those connections grew it by more than 2 MiB, so it trims too
      const a = await agent.waitFor(
        /malloc trimmed released=(true|false) ms=[\d.]+ rssBeforeMiB=([\d.]+) rssAfterMiB=([\d.]+)/,
        40_000,
      );
      assert.ok(Number(a[3]) <= Number(a[2]), `agent RSS did not grow in its trim: ${a[2]} → ${a[3]} MiB`);
    } finally {
      await own.close();
    }
  },
);
