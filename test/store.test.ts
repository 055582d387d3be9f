import assert from 'node:assert/strict';
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { FileClusters as FileStore } from '../src/mode/file/clusters.ts';
import type { ClusterEvent } from '../src/mode/mode.ts';
import { removeDir, tempDir, tower, waitUntil } from './support/tower.ts';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) removeDir(d);
});
function freshDir(): string {
  const d = tempDir('store');
  dirs.push(d);
  return d;
}

test('clusters are written atomically with 0600, and a stale update is refused', async () => {
  const store = new FileStore(freshDir());
  const c = await store.create('alpha', 'a'.repeat(64));
  assert.equal(statSync(join(store.dir, 'clusters', 'alpha.yaml')).mode & 0o777, 0o600);
  await assert.rejects(store.create('alpha', 'b'), /cluster "alpha" already exists/);
  const c2 = await store.update({ ...c, token: 'c'.repeat(64) });
  assert.notEqual(c2.revision, c.revision);
  await assert.rejects(
    store.update({ ...c, token: 'd' }),
    (err: Error & { code?: string }) => err.code === 'ECONFLICT',
  );
  assert.equal((await store.get('alpha'))?.token, 'c'.repeat(64));
  await assert.rejects(store.get('../x'), /invalid cluster name/);
  store.close();
});

test('the watch reports additions, changes and removals within a second', async () => {
  const store = new FileStore(freshDir());
  const events: ClusterEvent[] = [];
  const w = store.watch((e) => events.push(e));
  const c = await store.create('beta', 'a'.repeat(64));
  await waitUntil('added', () => events.some((e) => e.type === 'added'), 1500, 20);
  await store.update({ ...c, token: 'b'.repeat(64) });
  await waitUntil(
    'modified',
    () => events.some((e) => e.type === 'modified' && e.cluster.token === 'b'.repeat(64)),
    1500,
    20,
  );
  // an edit in place (same file, no rename): inotify names the file
  writeFileSync(
    join(store.dir, 'clusters', 'beta.yaml'),
    `name: beta\ntoken: ${'e'.repeat(64)}\ncreatedAt: x\ngeneration: 7\n`,
  );
  await waitUntil(
    'modified in place',
    () => events.some((e) => e.type === 'modified' && e.cluster.token === 'e'.repeat(64)),
    1500,
    20,
  );
  removeDir(join(store.dir, 'clusters', 'beta.yaml'));
  await waitUntil('deleted', () => events.some((e) => e.type === 'deleted' && e.name === 'beta'), 1500, 20);
  w.close();
  store.close();
});

test('an unusable cluster file fails closed: it is listed with its problem, never dropped or trusted', async () => {
  const store = new FileStore(freshDir());
  await store.create('good', 'a'.repeat(64));
  const files: [string, string | undefined, RegExp][] = [
    ['unparseable', 'name: [unclosed', /is not YAML/],
    ['empty', '', /is empty/],
    ['malformed', 'name: malformed\ntoken: 5\ngeneration: 1\n', /is malformed/],
    ['short-token', 'name: short-token\ntoken: abc\ngeneration: 1\n', /is malformed/],
    ['unreadable', undefined, /cannot be read: EISDIR/],
  ];
  for (const [name, content, why] of files) {
    const path = join(store.dir, 'clusters', `${name}.yaml`);
    if (content === undefined) mkdirSync(path);
    else writeFileSync(path, content);
    const c = await store.get(name);
    assert.equal(c?.token, '', `${name}: no token to trust`);
    assert.match(c?.problem ?? '', why);
  }
  const listed = await store.list();
  assert.deepEqual(
    listed.map((c) => c.name),
    ['empty', 'good', 'malformed', 'short-token', 'unparseable', 'unreadable'],
  );
  assert.deepEqual(
    listed.filter((c) => !c.problem).map((c) => c.name),
    ['good'],
  );
  await assert.rejects(
    store.create('empty', 'b'.repeat(64)),
    /already exists/,
    'an unusable record is not silently replaced',
  );
  store.close();
});

test('concurrent tower token runs on one fresh data dir agree on the CA-less host key and on tokens', async () => {
  const dir = freshDir();
  const env = { TOWER_HOME: dir };
  const runs = await Promise.all(Array.from({ length: 6 }, (_, i) => tower(['token', i % 2 ? 'same' : `c${i}`], env)));
  for (const r of runs) assert.equal(r.code, 0, r.stderr);
  const fingerprints = new Set(runs.map((r) => /--proxy-fingerprint (\S+)/.exec(r.stdout)![1]));
  assert.equal(fingerprints.size, 1, 'one host key, created once');
  const sameTokens = new Set(runs.filter((_, i) => i % 2).map((r) => /^token: (\w+)/m.exec(r.stdout)![1]));
  assert.equal(sameTokens.size, 1, 'the cluster was created once');
  assert.equal(statSync(join(dir, 'ssh_host_key')).mode & 0o777, 0o600);
});

test('tower kubeconfig creates the CA once and keeps the key 0600', async () => {
  const dir = freshDir();
  const env = { TOWER_HOME: dir };
  assert.equal((await tower(['token', 'alpha'], env)).code, 0);
  const [k1, k2] = await Promise.all([tower(['kubeconfig', 'alpha'], env), tower(['kubeconfig', 'alpha'], env)]);
  assert.equal(k1.code, 0, k1.stderr);
  assert.equal(k2.code, 0, k2.stderr);
  const ca = (s: string) => /certificate-authority-data: (\S+)/.exec(s)![1];
  assert.equal(ca(k1.stdout), ca(k2.stdout));
  assert.equal(statSync(join(dir, 'ca.key')).mode & 0o777, 0o600);
  assert.match(k1.stdout, /server: https:\/\/127\.0\.0\.1:6443\/clusters\/alpha/);
});
