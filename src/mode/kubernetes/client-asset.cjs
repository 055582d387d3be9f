// Stands in for `@kubernetes/client-node` and `undici` in the bundle. Together they are three
// quarters of the code, and every tower process would parse them at start (+26 MiB RSS for an
// agent); so they travel as a SEA asset of their own (scripts/build.mjs), compiled here on first
// use, i.e. only by a command in Kubernetes mode.
'use strict';
const Module = require('node:module');
const { readFileSync } = require('node:fs');
const { join } = require('node:path');

let loaded;
exports.load = function load() {
  if (loaded) return loaded;
  const sea = require('node:sea');
  const name = 'kube-client.cjs';
  // outside a single executable (`node dist/tower.cjs`) the asset sits beside the bundle
  const source = sea.isSea() ? sea.getAsset(name, 'utf8') : readFileSync(join(__dirname, name), 'utf8');
  const m = new Module(name);
  m.filename = name;
  m.paths = [];
  m._compile(source, name);
  loaded = m.exports;
  return loaded;
};
