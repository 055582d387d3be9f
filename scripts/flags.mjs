// The flag tables of the README, made from `dist/tower <command> --help`, so that they cannot drift
// apart: `npm run docs` rewrites the tables between `<!-- flags: COMMAND -->` and `<!-- /flags -->`;
// the tests check that the README holds what the binary prints.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { root } from './lib.mjs';

export const COMMANDS = [
  'proxy',
  'agent',
  'token',
  'kubeconfig',
  'revoke',
  'clusters',
  'delete',
  'version',
  'install proxy',
  'install agent',
  'install crd',
  'uninstall proxy',
  'uninstall agent',
];
const README = join(root, 'README.md');

/**
 * [{ usage: '--port PORT', default: '8080' | undefined, help }] of one command's own flags, as --help prints them
 * @param {string} helpText
 * @returns {{ usage: string, default: string | undefined, help: string }[]}
 */
export function helpFlags(helpText) {
  const own = helpText.split(/\n\n(?=Flags of every command:)/)[0];
  const section = own.split(/^Flags:\n/m)[1];
  if (!section) return [];
  const flags = [];
  for (const line of section.split('\n')) {
    const head = /^ {2}(-.+?)(?: \(default (.*)\))?$/.exec(line);
    if (head) {
      flags.push({ usage: head[1], default: head[2], help: '' });
      continue;
    }
    const more = /^ {8}(.*)$/.exec(line);
    if (more && flags.length) flags.at(-1).help += (flags.at(-1).help ? ' ' : '') + more[1];
    else if (line.trim() === '') break;
  }
  return flags;
}

/** @param {string} binary @param {string} command @returns {string} */
export function help(binary, command) {
  return execFileSync(binary, [...command.split(' '), '--help'], { encoding: 'utf8' });
}

export function table(flags) {
  const cell = (s) => s.replace(/\|/g, '\\|');
  return [
    '| flag | default | |',
    '| --- | --- | --- |',
    ...flags.map(
      (f) => `| \`${f.usage}\` | ${f.default === undefined ? '' : `\`${cell(f.default)}\``} | ${cell(f.help)} |`,
    ),
  ].join('\n');
}

/**
 * the tables the README holds now, by command
 * @returns {Record<string, string>}
 */
export function readmeTables(text = readFileSync(README, 'utf8')) {
  /** @type {Record<string, string>} */
  const out = {};
  for (const m of text.matchAll(/<!-- flags: ([a-z ]+) -->\n([\s\S]*?)\n?<!-- \/flags -->/g)) out[m[1]] = m[2];
  return out;
}

if (process.argv[1] === new URL(import.meta.url).pathname) {
  const binary = join(root, 'dist', 'tower');
  let text = readFileSync(README, 'utf8');
  for (const c of COMMANDS) {
    const marker = new RegExp(`(<!-- flags: ${c} -->\\n)[\\s\\S]*?(<!-- /flags -->)`);
    if (!marker.test(text)) {
      console.error(`docs: README.md has no <!-- flags: ${c} --> table`);
      process.exitCode = 1;
      continue;
    }
    text = text.replace(marker, (_, a, b) => `${a}${table(helpFlags(help(binary, c)))}\n${b}`);
  }
  writeFileSync(README, text);
  console.log('docs: README flag tables rewritten from dist/tower --help');
}
