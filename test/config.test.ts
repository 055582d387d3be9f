import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { parseDuration } from '../src/config/duration.ts';
import { loadConfig } from '../src/config/loader.ts';
import { AGENT_OPTIONS, PROXY_OPTIONS } from '../src/config/options.ts';
import { normalizeProxyServer } from '../src/agent/agent.ts';
import { removeDir, tempDir, tower } from './support/tower.ts';

const dir = tempDir('config');
after(() => removeDir(dir));

test('flags beat TOWER_* environment, which beats the config file, which beats defaults', () => {
  const file = join(dir, 'tower.yaml');
  writeFileSync(
    file,
    'port: 1111\ngateway-port: 2222\nhost: 127.0.0.2\nproxy:\n  host: 127.0.0.3\nname: shared-with-agent\n',
  );
  const { values, sources } = loadConfig(PROXY_OPTIONS, {
    command: 'proxy',
    flags: { port: '3333' },
    env: { TOWER_GATEWAY_PORT: '4444', TOWER_HOME: '/srv/tower' },
    configFile: file,
  });
  assert.equal(values.port, 3333);
  assert.equal(sources.port, 'flag');
  assert.equal(values.gatewayPort, 4444);
  assert.equal(sources.gatewayPort, 'env');
  assert.equal(values.host, '127.0.0.3', 'the proxy section overrides the top level');
  assert.equal(sources.host, 'config');
  assert.equal(values.publishServiceAddress, '127.0.0.1');
  assert.equal(sources.publishServiceAddress, 'default');
  assert.equal(values.dataDir, '/srv/tower', 'TOWER_HOME sets --data-dir');
});

test('errors name the option, the source and what is wanted', () => {
  const file = join(dir, 'bad.yaml');
  writeFileSync(file, 'keepalive: soon\n');
  assert.throws(
    () => loadConfig(AGENT_OPTIONS, { command: 'agent', flags: {}, env: {}, configFile: file }),
    /invalid --keepalive value "soon" from key "keepalive" in .*bad\.yaml: want a duration such as 30s/,
  );
  assert.throws(
    () => loadConfig(PROXY_OPTIONS, { command: 'proxy', flags: { port: '70000' }, env: {} }),
    /invalid --port value "70000" from flag --port: a port is 1-65535/,
  );
  writeFileSync(file, 'prot: 8080\n');
  assert.throws(
    () => loadConfig(PROXY_OPTIONS, { command: 'proxy', flags: {}, env: {}, configFile: file }),
    /unknown option "prot" .*\(see: tower proxy --help\)/,
  );
  assert.throws(
    () => loadConfig(PROXY_OPTIONS, { command: 'proxy', flags: {}, env: {}, configFile: join(dir, 'missing.yaml') }),
    /cannot read config file .*missing\.yaml: no such file/,
  );
});

test('Go durations', () => {
  assert.equal(parseDuration('10s'), 10_000);
  assert.equal(parseDuration('1m30s'), 90_000);
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration('1h'), 3_600_000);
  assert.equal(parseDuration('0'), 0);
  assert.equal(parseDuration('10'), undefined);
  assert.equal(parseDuration('s'), undefined);
});

test('--proxy-server is normalised as the Go agent does', () => {
  assert.equal(normalizeProxyServer('http://127.0.0.1:8080'), 'ws://127.0.0.1:8080');
  assert.equal(normalizeProxyServer('https://proxy.example'), 'wss://proxy.example:443');
  assert.equal(normalizeProxyServer('http://proxy.example'), 'ws://proxy.example:80');
  assert.equal(normalizeProxyServer('proxy.example:9000'), 'ws://proxy.example:9000');
  assert.throws(() => normalizeProxyServer('ftp://x'), /the scheme must be http, https, ws or wss/);
});

test('-v 2 prints where every option came from, with the token redacted', async () => {
  const r = await tower(
    [
      'agent',
      '-v',
      '2',
      '--name',
      'x',
      '--token',
      'secret-token',
      '--proxy-fingerprint',
      `SHA256:${'A'.repeat(43)}`,
      '--kubeconfig',
      join(dir, 'none.kubeconfig'),
    ],
    { TOWER_KEEPALIVE: '5s' },
  );
  assert.equal(r.code, 1);
  assert.match(r.stderr, /option --keepalive=5s \(env\)/);
  assert.match(r.stderr, /option --token=<redacted> \(flag\)/);
  assert.doesNotMatch(r.stderr, /secret-token/);
  assert.match(r.stderr, /tower agent: cannot read --kubeconfig .*none\.kubeconfig: no such file/);
});
