import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { digestOf, type BlobDigest } from '../../../src-main/core/digest.js';
import { Code } from '../../../src-main/core/errors.js';
import type { ActionResult, ActionResult__Output } from '../../../src-main/core/proto/index.js';
import { rejectsWith, startStorageServer, unary, type StorageHarness } from './storage-harness.js';

let h: StorageHarness;
before(async () => {
  h = await startStorageServer();
});
after(() => h.close());

const getResult = (action: BlobDigest, extra: Record<string, unknown> = {}) =>
  unary<ActionResult__Output>((cb) =>
    h.ac.GetActionResult({ action_digest: action, ...extra }, cb),
  );
const updateResult = (action: BlobDigest, result: ActionResult | undefined) =>
  unary<ActionResult__Output>((cb) =>
    h.ac.UpdateActionResult({ action_digest: action, action_result: result }, cb),
  );

/** Stores blobs for stdout, an output file and an output Tree, and a result naming them. */
async function resultWithBlobs(tag: string) {
  const stdout = Buffer.from(`stdout of ${tag}\n`);
  const obj = Buffer.from(`object code of ${tag}`);
  const tree = Buffer.from(`tree of ${tag}`);
  for (const b of [stdout, obj, tree]) await h.blobStore.put(digestOf(b), b);
  const result: ActionResult = {
    exit_code: 0,
    stdout_digest: digestOf(stdout),
    output_files: [{ path: 'out/main.o', digest: digestOf(obj) }],
    output_directories: [{ path: 'out/gen', tree_digest: digestOf(tree) }],
  };
  return { result, stdout, obj };
}

describe('ActionCache service', () => {
  test('UpdateActionResult stores a result that GetActionResult returns', async () => {
    const action = digestOf(Buffer.from('action 1'));
    const { result } = await resultWithBlobs('1');
    const stored = await updateResult(action, result);
    assert.deepEqual(stored.output_files[0].path, 'out/main.o');

    const got = await getResult(action);
    assert.equal(got.exit_code, 0);
    assert.deepEqual(got.stdout_digest, result.stdout_digest);
    assert.deepEqual(
      got.output_directories[0].tree_digest,
      result.output_directories![0].tree_digest,
    );
  });

  test('GetActionResult on a miss is NOT_FOUND', async () => {
    await rejectsWith(
      getResult(digestOf(Buffer.from('never run'))),
      Code.NOT_FOUND,
      /No action result/,
    );
  });

  test('a result whose output blob is gone from the CAS is NOT_FOUND, so the client rebuilds', async () => {
    const action = digestOf(Buffer.from('action with a lost output'));
    const { result } = await resultWithBlobs('2');
    const lost = digestOf(Buffer.from('an output nobody uploaded'));
    await updateResult(action, { ...result, output_files: [{ path: 'lost', digest: lost }] });
    await rejectsWith(
      getResult(action),
      Code.NOT_FOUND,
      new RegExp(`references blob "${lost.hash}/${lost.size_bytes}"`),
    );
  });

  test('a result whose stderr or output Tree is missing is NOT_FOUND too', async () => {
    const { result } = await resultWithBlobs('3');
    const lost = digestOf(Buffer.from('lost'));
    const a = digestOf(Buffer.from('action with a lost stderr'));
    await updateResult(a, { ...result, stderr_digest: lost });
    await rejectsWith(getResult(a), Code.NOT_FOUND);
    const b = digestOf(Buffer.from('action with a lost tree'));
    await updateResult(b, { ...result, output_directories: [{ path: 'd', tree_digest: lost }] });
    await rejectsWith(getResult(b), Code.NOT_FOUND);
  });

  test('stdout and requested output files are inlined on request', async () => {
    const action = digestOf(Buffer.from('action with inlining'));
    const { result, stdout, obj } = await resultWithBlobs('4');
    await updateResult(action, result);

    const plain = await getResult(action);
    assert.equal(plain.stdout_raw.length, 0);
    const inlined = await getResult(action, {
      inline_stdout: true,
      inline_output_files: ['out/main.o'],
    });
    assert.deepEqual(inlined.stdout_raw, stdout);
    assert.deepEqual(inlined.output_files[0].contents, obj);
  });

  test('UpdateActionResult without a result or with a malformed digest is INVALID_ARGUMENT', async () => {
    const action = digestOf(Buffer.from('bad update'));
    await rejectsWith(updateResult(action, undefined), Code.INVALID_ARGUMENT, /no action_result/);
    await rejectsWith(
      updateResult(action, { stdout_digest: { hash: 'zz', size_bytes: 1 } }),
      Code.INVALID_ARGUMENT,
    );
    await rejectsWith(getResult(action), Code.NOT_FOUND);
  });

  test('a digest function other than SHA256 is INVALID_ARGUMENT', async () => {
    await rejectsWith(
      getResult(digestOf(Buffer.from('x')), { digest_function: 'SHA1' }),
      Code.INVALID_ARGUMENT,
      /"SHA1" is not supported/,
    );
  });

  test('blobs and results survive a server restart on the same data directory', async () => {
    const directory = h.directory;
    const action = digestOf(Buffer.from('action before restart'));
    const { result } = await resultWithBlobs('5');
    await updateResult(action, result);
    await h.close({ keepDirectory: true });

    h = await startStorageServer({ directory });
    const got = await getResult(action);
    assert.deepEqual(got.output_files[0].digest, result.output_files![0].digest);
  });
});
