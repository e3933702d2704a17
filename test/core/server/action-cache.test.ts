import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { digestOf } from '../../../src-main/core/digest.js';
import { Code } from '../../../src-main/core/errors.js';
import { createActionCacheStore } from '../../../src-main/core/server/action-cache.js';

const dirs: string[] = [];
async function freshDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'idlebuild-ac-'));
  dirs.push(dir);
  return dir;
}
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

const action = digestOf(Buffer.from('an Action message'));
const stdout = digestOf(Buffer.from('compiled\n'));
const result = {
  exit_code: 3,
  stdout_digest: stdout,
  output_files: [{ path: 'out/a.o', digest: digestOf(Buffer.from('obj')), is_executable: true }],
  execution_metadata: { worker: 'idlebuild-test' },
};

describe('action cache store', () => {
  test('a stored ActionResult reads back with its fields', async () => {
    const directory = await freshDir();
    const store = await createActionCacheStore({ directory });
    assert.equal(await store.get(action), undefined);
    await store.put(action, result);

    const got = await store.get(action);
    assert.equal(got?.exit_code, 3);
    assert.deepEqual(got?.stdout_digest, stdout);
    assert.equal(got?.output_files[0].path, 'out/a.o');
    assert.equal(got?.output_files[0].is_executable, true);
    assert.equal(got?.execution_metadata?.worker, 'idlebuild-test');
    assert.deepEqual(await readdir(join(directory, 'ac')), [`${action.hash}-${action.size_bytes}`]);
  });

  test('the last write for an action digest wins', async () => {
    const store = await createActionCacheStore({ directory: await freshDir() });
    await store.put(action, result);
    await store.put(action, { ...result, exit_code: 0 });
    assert.equal((await store.get(action))?.exit_code, 0);
  });

  test('entries survive a restart and crash leftovers are removed', async () => {
    const directory = await freshDir();
    await (await createActionCacheStore({ directory })).put(action, result);
    const leftover = join(directory, 'ac', `${action.hash}-${action.size_bytes}.dead.tmp`);
    await writeFile(leftover, 'torn');

    const reopened = await createActionCacheStore({ directory });
    assert.equal((await reopened.get(action))?.exit_code, 3);
    assert.deepEqual(await readdir(join(directory, 'ac')), [`${action.hash}-${action.size_bytes}`]);
  });

  test('a corrupt entry is a miss', async () => {
    const directory = await freshDir();
    const store = await createActionCacheStore({ directory });
    await writeFile(
      join(directory, 'ac', `${action.hash}-${action.size_bytes}`),
      Buffer.from([0xff, 0xff, 0xff]),
    );
    assert.equal(await store.get(action), undefined);
  });

  test('a malformed action digest is INVALID_ARGUMENT', async () => {
    const store = await createActionCacheStore({ directory: await freshDir() });
    await assert.rejects(store.get({ hash: '../../etc', size_bytes: 1 }), {
      code: Code.INVALID_ARGUMENT,
    });
    await assert.rejects(store.put({ hash: 'xyz', size_bytes: -1 }, result), {
      code: Code.INVALID_ARGUMENT,
    });
  });
});
