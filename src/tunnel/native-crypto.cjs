// Stands in for ssh2's `require('./crypto/build/Release/sshcrypto.node')` in the bundle: a single
// executable cannot require a .node file, so the binding travels as the SEA asset sshcrypto.node and is
// loaded as src/native/embedded.ts loads every embedded addon. Throws when it cannot be, as a missing
// binding does, and ssh2 then uses its JS crypto; the reason is kept in
// globalThis.__towerNativeCryptoProblem for the one warning that says so.
'use strict';
const { loadEmbeddedAddon } = require('../native/embedded.ts');

const addon = loadEmbeddedAddon('sshcrypto.node');
if ('missing' in addon) throw new Error(addon.missing);
if ('problem' in addon) {
  globalThis.__towerNativeCryptoProblem =
    `the native crypto binding could not be written and loaded (${addon.problem}); ` +
    'set TMPDIR to a writable directory that allows executables';
  throw new Error(globalThis.__towerNativeCryptoProblem);
}
module.exports = addon.exports;
