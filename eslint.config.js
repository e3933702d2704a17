// Lint rules, including the import boundaries between environments (see
// ../shared/DESIGN.md, "Layout"). The boundaries are errors, not warnings: the
// core must run under plain Node, and the renderer must never reach Node.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

const nodeBuiltins = ['node:*', 'fs', 'path', 'os', 'child_process', 'net', 'http', 'crypto'];

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.scratch/**', 'src-main/core/proto/gen/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['scripts/**/*.mjs', 'bin/**/*.js', 'eslint.config.js'],
    languageOptions: { globals: globals.node },
  },
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src-main/core/**/*.ts', 'src-main/cli.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['electron', 'electron/*'], message: 'The core runs under plain Node.' },
            {
              group: ['**/app/*', '**/preload/*', '**/src-renderer/*'],
              message: 'Core may import only Node and src-shared.',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['src-shared/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: nodeBuiltins, message: 'src-shared is environment-neutral.' },
            {
              group: ['electron', '**/src-main/*', '**/src-renderer/*', '**/core/*'],
              message: 'src-shared imports nothing else.',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['src-renderer/**/*.ts', 'src-renderer/**/*.tsx'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: [...nodeBuiltins, 'electron'], message: 'The renderer runs in a browser.' },
            {
              group: ['**/src-main/*', '**/core/*'],
              message: 'The renderer may import only src-shared.',
            },
          ],
        },
      ],
    },
  },
);
