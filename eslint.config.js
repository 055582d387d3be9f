// eslint, run by `npm run lint`: @eslint/js and typescript-eslint's recommended sets over src/, test/ and
// scripts/. Not the type-checked set: it must run in seconds, and tsc (`npm run typecheck`) checks the types.
import js from '@eslint/js';
import { defineConfig, globalIgnores } from 'eslint/config';
import tseslint from 'typescript-eslint';

const CODE = ['**/*.ts', '**/*.mjs', '**/*.cjs', '*.js'];

// The .mjs and .cjs files run on the project's Node (24): its globals are theirs (`process`, `URL`, `Buffer`…).
// In .ts files tsc resolves names, and typescript-eslint turns no-undef off there.
const NODE_GLOBALS = Object.fromEntries(Object.getOwnPropertyNames(globalThis).map((name) => [name, 'readonly']));

export default defineConfig(
  globalIgnores(['dist/']),
  {
    files: CODE,
    extends: [js.configs.recommended, tseslint.configs.recommended],
    languageOptions: { globals: NODE_GLOBALS },
    rules: {
      // 120 columns, as prettier; strings and comments count too (prettier cannot break those). Not even URLs are
      // exempt (the option exempts any line that mentions https://); a URL too long to fit gets a disable comment.
      'max-len': ['error', { code: 120, tabWidth: 2 }],
      // Deliberate: input is checked for control characters (header values, names, log fields, terminal output),
      // always written as escapes (`/[\x00-\x1f]/`), which cannot be the typo this rule exists to catch.
      'no-control-regex': 'off',
      // `const { le: _bucket, ...series } = labels` drops a key by destructuring: the rest is what is used.
      '@typescript-eslint/no-unused-vars': ['error', { ignoreRestSiblings: true }],
    },
  },
  {
    // CommonJS on purpose: loaded with require() from the bundle (src/**/*.cjs) or by dependency-cruiser.
    files: ['**/*.cjs'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: { require: 'readonly', module: 'writable', exports: 'writable', __dirname: 'readonly' },
    },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
