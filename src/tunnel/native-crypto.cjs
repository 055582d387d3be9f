// Stands in for ssh2's `require('./crypto/build/Release/sshcrypto.node')` in the bundle: a single
// executable cannot require a .node file, so the binding travels as a SEA asset, is written once
// to a private temp directory and loaded with process.dlopen. Throws when absent, as a missing
// binding does, and ssh2 then uses its JS crypto.
'use strict';
const { createHash } = require('node:crypto');
const { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync } = require('node:fs');
const { tmpdir } = require('node:os');
const { join } = require('node:path');

const sea = require('node:sea');
if (!sea.isSea()) throw new Error('sshcrypto.node is embedded in the tower binary only');
const bytes = Buffer.from(sea.getRawAsset('sshcrypto.node'));
const hash = createHash('sha256').update(bytes).digest('hex').slice(0, 16);
const dir = join(tmpdir(), `tower-${process.getuid ? process.getuid() : 'u'}`);
const file = join(dir, `sshcrypto-${hash}.node`);
let present = false;
try { present = createHash('sha256').update(readFileSync(file)).digest('hex').slice(0, 16) === hash; } catch {}
if (!present) {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, bytes, { mode: 0o700 });
  renameSync(tmp, file);
}
const m = { exports: {} };
process.dlopen(m, file);
module.exports = m.exports;
