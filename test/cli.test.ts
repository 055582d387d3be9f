import assert from 'node:assert/strict';
import { test } from 'node:test';
import { COMMANDS, help, helpFlags, readmeTables } from '../scripts/flags.mjs';
import { pattern } from './support/pattern.ts';
import { tempDir, tower, TOWER } from './support/tower.ts';

test("the README's flag tables name the flags and defaults that every command's --help prints", () => {
  const tables = readmeTables();
  for (const command of COMMANDS) {
    const flags = helpFlags(help(TOWER, command));
    assert.ok(flags.length > 0 || command === 'delete', `tower ${command} --help lists no flags`);
    const table = tables[command];
    assert.ok(
      table !== undefined,
      `README.md has no flag table for tower ${command} (<!-- flags: ${command} -->; npm run docs writes it)`,
    );
    const rows = table
      .split('\n')
      .slice(2)
      .map((row) => {
        const [, usage = '', def = ''] = /^\| `([^`]+)` \| (?:`(.*?)`)? \|/.exec(row) ?? [];
        return { usage, default: def || undefined };
      });
    assert.deepEqual(
      rows,
      flags.map((f) => ({ usage: f.usage, default: f.default })),
      `README table of tower ${command} differs from its --help (run: npm run docs)`,
    );
  }
});

test('the scripts run on the Node 24 that npm ci installs, whatever Node npm itself runs on', () => {
  assert.match(process.version, /^v24\./);
});

test('usage lines name values; every boolean is a switch with a --no- form', async () => {
  const r = await tower(['proxy', '--help']);
  assert.equal(r.code, 0);
  assert.doesNotMatch(r.stdout, /#0/);
  assert.match(r.stdout, /^ {2}--gateway-port PORT \(default 6443\)$/m);
  assert.match(r.stdout, /^ {2}--request-timeout DURATION \(default 1m\)$/m);
  assert.match(r.stdout, /^ {2}--access-log, --no-access-log \(default false\)$/m);
  assert.match(r.stdout, /^ {2}-v, --v N \(default 0\)$/m);
  const agent = await tower(['help', 'agent']);
  assert.match(agent.stdout, /^ {2}--tls-at-agent, --no-tls-at-agent \(default true\)$/m);
  assert.match(agent.stdout, /^ {2}--max-retry-interval DURATION \(default 30s\)$/m);
});

test(
  'tower, tower help and tower --help list every command; ' + '--version prints the version, -v is verbosity',
  async () => {
    for (const args of [[], ['help'], ['--help']]) {
      const r = await tower(args);
      assert.equal(r.code, 0);
      for (const c of COMMANDS)
        assert.match(r.stdout, new RegExp(`^ {2}${c} +\\S`, 'm'), `tower ${args.join(' ')} lists ${c}`);
    }
    assert.equal((await tower(['--version'])).stdout, '0.1.0\n');
    const v = await tower(['-v']);
    assert.equal(v.code, 1);
    assert.match(
      v.stderr,
      /^tower: unknown command "-v"; did you mean version\? \(see: tower help; -v N is a command's log verbosity\)\n$/,
    );
  },
);

test('tower version: version, commit, Node.js, crypto backend; -o json', async () => {
  const text = await tower(['version']);
  assert.match(
    text.stdout,
    /^tower 0\.1\.0 \(commit [0-9a-f]{12}(-dirty)?\), Node\.js 24\.\d+\.\d+, linux\/x64, crypto: native\n$/,
  );
  const json = JSON.parse((await tower(['version', '-o', 'json'])).stdout) as Record<string, string>;
  assert.equal(json.version, '0.1.0');
  assert.match(json.node!, /^24\./);
  assert.equal(json.crypto, 'native');
  assert.match(json.commit!, /^[0-9a-f]{12}/);
});

test(
  'command-line mistakes: one line naming the problem, ' + 'the nearest valid flag or command, and where to look',
  async () => {
    const cases: [string[], RegExp][] = [
      [
        ['proxy', '--gatway-port', '1'],
        /^tower proxy: unknown flag --gatway-port; did you mean --gateway-port\? \(see: tower proxy --help\)\n$/,
      ],
      [
        ['agent', '--proxy-fingerprnt=x'],
        pattern(
          /^tower agent: unknown flag --proxy-fingerprnt; /,
          /did you mean --proxy-fingerprint\? \(see: tower agent --help\)\n$/,
        ),
      ],
      [['proxy', '--port'], /^tower proxy: --port needs a value \(see: tower proxy --help\)\n$/],
      [['token', 'a', 'b'], /^tower token: unexpected argument "b" \(see: tower token --help\)\n$/],
      [
        ['token'],
        /^tower token: missing NAME, the cluster's name \(e\.g\. tower token alpha; see: tower token --help\)\n$/,
      ],
      [['prxy'], /^tower: unknown command "prxy"; did you mean proxy\? \(see: tower help\)\n$/],
      [['install'], /^tower install: name what to install: proxy, agent or crd \(see: tower help\)\n$/],
      [['help', 'nothing'], /^tower help: unknown command "nothing" \(see: tower help\)\n$/],
      [
        ['proxy', '--access-log=maybe'],
        pattern(
          /^tower proxy: invalid --access-log value "maybe": it is a switch; /,
          /give --access-log or --no-access-log \(see: tower proxy --help\)\n$/,
        ),
      ],
      [['proxy', '--port', 'http'], /^tower proxy: invalid --port value "http" from flag --port: want an integer\n$/],
    ];
    for (const [args, want] of cases) {
      const r = await tower(args, { TOWER_HOME: tempDir('cli') });
      assert.equal(r.code, 1, `tower ${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, want, `tower ${args.join(' ')}`);
      assert.equal(r.stdout, '');
    }
  },
);

test('--switch=false and --no-switch both clear a switch (Go style and clipanion style)', async () => {
  for (const off of ['--tls-at-agent=false', '--no-tls-at-agent']) {
    const r = await tower([
      'agent',
      '-v',
      '2',
      off,
      '--name',
      'x',
      '--token',
      't',
      '--proxy-fingerprint',
      `SHA256:${'A'.repeat(43)}`,
      '--kubeconfig',
      '/nonexistent',
    ]);
    assert.match(r.stderr, /option --tls-at-agent=false \(flag\)/, off);
  }
});
