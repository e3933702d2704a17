import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ESLint } from 'eslint';

// The import boundaries between environments are ESLint errors (see
// eslint.config.js): these cases show the rule fires, so a broken config
// cannot pass silently.

const repoRoot = new URL('../../../', import.meta.url).pathname;
const eslint = new ESLint({ cwd: repoRoot });

async function boundaryErrors(filePath: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath });
  return result.messages
    .filter((m) => m.ruleId === 'no-restricted-imports' && m.severity === 2)
    .map((m) => m.message);
}

test('the core may not import electron', async () => {
  const errors = await boundaryErrors(
    'src-main/core/example.ts',
    "import { app } from 'electron';\nexport const x = app;\n",
  );
  assert.equal(errors.length, 1);
  assert.match(errors[0], /plain Node/);
});

test('src-shared may not import Node built-ins', async () => {
  const errors = await boundaryErrors(
    'src-shared/example.ts',
    "import { readFile } from 'node:fs/promises';\nexport const x = readFile;\n",
  );
  assert.equal(errors.length, 1);
});

test('the renderer may not import Node or the main process', async () => {
  const errors = await boundaryErrors(
    'src-renderer/example.ts',
    "import { join } from 'node:path';\nimport { x } from '../src-main/core/errors.js';\nexport const y = [join, x];\n",
  );
  assert.equal(errors.length, 2);
});

test('the core may import Node and src-shared', async () => {
  const errors = await boundaryErrors(
    'src-main/core/example.ts',
    "import { join } from 'node:path';\nimport { bazelFlags } from '../../src-shared/bazel.js';\nexport const x = [join, bazelFlags];\n",
  );
  assert.deepEqual(errors, []);
});
