import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { digestOf, EMPTY_SHA256, type BlobDigest } from '../../../src-main/core/digest.js';
import { Code } from '../../../src-main/core/errors.js';
import {
  encode,
  type BatchReadBlobsResponse__Output,
  type BatchUpdateBlobsResponse__Output,
  type Directory,
  type FindMissingBlobsResponse__Output,
  type GetTreeResponse__Output,
} from '../../../src-main/core/proto/index.js';
import {
  collect,
  rejectsWith,
  startStorageServer,
  unary,
  type StorageHarness,
} from './storage-harness.js';

let h: StorageHarness;
before(async () => {
  h = await startStorageServer({ maxBatchTotalSizeBytes: 64 * 1024 });
});
after(() => h.close());

const findMissing = (digests: BlobDigest[], digest_function?: string) =>
  unary<FindMissingBlobsResponse__Output>((cb) =>
    h.cas.FindMissingBlobs(
      { blob_digests: digests, digest_function: digest_function as 'SHA256' },
      cb,
    ),
  );
const batchUpdate = (requests: { digest: BlobDigest; data: Buffer }[]) =>
  unary<BatchUpdateBlobsResponse__Output>((cb) => h.cas.BatchUpdateBlobs({ requests }, cb));
const batchRead = (digests: BlobDigest[]) =>
  unary<BatchReadBlobsResponse__Output>((cb) => h.cas.BatchReadBlobs({ digests }, cb));
const getTree = (root: BlobDigest, page_size = 0, page_token = '') =>
  collect<GetTreeResponse__Output>(h.cas.GetTree({ root_digest: root, page_size, page_token }));

/** Stores a Directory in the CAS and returns its digest. */
async function putDirectory(directory: Directory): Promise<BlobDigest> {
  const bytes = encode('build.bazel.remote.execution.v2.Directory', directory);
  const digest = digestOf(bytes);
  await h.blobStore.put(digest, bytes);
  return digest;
}

describe('ContentAddressableStorage service', () => {
  test('FindMissingBlobs reports only absent blobs, never the empty blob', async () => {
    const present = Buffer.from('present');
    await h.blobStore.put(digestOf(present), present);
    const absent = digestOf(Buffer.from('absent'));
    const empty = { hash: EMPTY_SHA256, size_bytes: 0 };
    const res = await findMissing([digestOf(present), absent, empty]);
    assert.deepEqual(res.missing_blob_digests, [absent]);
  });

  test('FindMissingBlobs accepts SHA256 and rejects other digest functions', async () => {
    await findMissing([], 'SHA256');
    await rejectsWith(
      findMissing([], 'BLAKE3'),
      Code.INVALID_ARGUMENT,
      /"BLAKE3" is not supported/,
    );
  });

  test('FindMissingBlobs rejects a malformed digest', async () => {
    await rejectsWith(
      findMissing([{ hash: 'nope', size_bytes: 1 }]),
      Code.INVALID_ARGUMENT,
      /Digest hash "nope"/,
    );
  });

  test('BatchUpdateBlobs stores blobs that BatchReadBlobs then returns', async () => {
    const a = Buffer.from('blob a');
    const b = randomBytes(1000);
    const res = await batchUpdate([
      { digest: digestOf(a), data: a },
      { digest: digestOf(b), data: b },
    ]);
    assert.deepEqual(
      res.responses.map((r) => r.status?.code),
      [Code.OK, Code.OK],
    );

    const read = await batchRead([digestOf(a), digestOf(b)]);
    assert.deepEqual(
      read.responses.map((r) => [r.status?.code, r.data]),
      [
        [Code.OK, a],
        [Code.OK, b],
      ],
    );
  });

  test('BatchUpdateBlobs with a wrong digest fails that blob only and stores nothing for it', async () => {
    const good = Buffer.from('good blob');
    const claimed = digestOf(Buffer.from('what the client claims'));
    const res = await batchUpdate([
      { digest: claimed, data: Buffer.from('what the client sends') },
      { digest: digestOf(good), data: good },
    ]);
    assert.equal(res.responses[0].status?.code, Code.INVALID_ARGUMENT);
    assert.match(res.responses[0].status?.message ?? '', /does not match its digest/);
    assert.deepEqual(res.responses[0].digest, claimed);
    assert.equal(res.responses[1].status?.code, Code.OK);
    assert.deepEqual((await findMissing([claimed, digestOf(good)])).missing_blob_digests, [
      claimed,
    ]);
  });

  test('BatchUpdateBlobs over max_batch_total_size_bytes is INVALID_ARGUMENT for the call', async () => {
    const big = randomBytes(40 * 1024);
    const other = randomBytes(40 * 1024);
    await rejectsWith(
      batchUpdate([
        { digest: digestOf(big), data: big },
        { digest: digestOf(other), data: other },
      ]),
      Code.INVALID_ARGUMENT,
      /max_batch_total_size_bytes/,
    );
    assert.equal((await findMissing([digestOf(big)])).missing_blob_digests.length, 1);
  });

  test('BatchReadBlobs reports NOT_FOUND per missing blob', async () => {
    const here = Buffer.from('here');
    await h.blobStore.put(digestOf(here), here);
    const gone = digestOf(Buffer.from('gone'));
    const res = await batchRead([gone, digestOf(here)]);
    assert.equal(res.responses[0].status?.code, Code.NOT_FOUND);
    assert.equal(res.responses[1].status?.code, Code.OK);
    assert.deepEqual(res.responses[1].data, here);
  });

  test('BatchReadBlobs asking for more than the batch limit is INVALID_ARGUMENT', async () => {
    await rejectsWith(
      batchRead([digestOf(randomBytes(8)), { hash: 'b'.repeat(64), size_bytes: 100_000 }]),
      Code.INVALID_ARGUMENT,
    );
  });

  test('SplitBlob and SpliceBlob are UNIMPLEMENTED', async () => {
    await rejectsWith(
      unary((cb) => h.cas.SplitBlob({ blob_digest: digestOf(Buffer.from('x')) }, cb)),
      Code.UNIMPLEMENTED,
    );
    await rejectsWith(
      unary((cb) => h.cas.SpliceBlob({}, cb)),
      Code.UNIMPLEMENTED,
    );
  });
});

describe('GetTree', () => {
  // root ─┬─ a ─── c ─── leaf
  //       └─ b ─── c (the same Directory again)
  //                d (missing from the CAS)
  let root: BlobDigest;
  let names: Map<string, string>;
  before(async () => {
    const file = { name: 'f.txt', digest: digestOf(Buffer.from('f')) };
    const leaf = await putDirectory({ files: [file] });
    const c = await putDirectory({ directories: [{ name: 'leaf', digest: leaf }] });
    const missing = digestOf(Buffer.from('never uploaded'));
    const a = await putDirectory({ directories: [{ name: 'c', digest: c }] });
    const b = await putDirectory({
      directories: [
        { name: 'c', digest: c },
        { name: 'd', digest: missing },
      ],
      files: [file],
    });
    root = await putDirectory({
      directories: [
        { name: 'a', digest: a },
        { name: 'b', digest: b },
      ],
    });
    names = new Map([
      [root.hash, 'root'],
      [a.hash, 'a'],
      [b.hash, 'b'],
      [c.hash, 'c'],
      [leaf.hash, 'leaf'],
    ]);
  });

  const label = (dir: GetTreeResponse__Output['directories'][number]) =>
    names.get(digestOf(encode('build.bazel.remote.execution.v2.Directory', dir)).hash) ?? '?';

  test('returns every present Directory once, breadth-first, skipping missing ones', async () => {
    const responses = await getTree(root);
    assert.equal(responses.at(-1)?.next_page_token, '');
    const order = responses.flatMap((r) => r.directories.map(label));
    assert.deepEqual(order, ['root', 'a', 'b', 'c', 'leaf']);
  });

  test('page_size 1 pages through the same order with page tokens', async () => {
    const order: string[] = [];
    let token = '';
    let calls = 0;
    do {
      const responses = await getTree(root, 1, token);
      calls++;
      const dirs = responses.flatMap((r) => r.directories);
      assert.equal(dirs.length, 1);
      order.push(label(dirs[0]));
      token = responses.at(-1)?.next_page_token ?? '';
    } while (token !== '' && calls < 20);
    assert.deepEqual(order, ['root', 'a', 'b', 'c', 'leaf']);
    assert.equal(calls, 5);
  });

  test('a page size of 2 returns pages of two', async () => {
    const first = await getTree(root, 2);
    assert.equal(first.flatMap((r) => r.directories).length, 2);
    const second = await getTree(root, 2, first.at(-1)!.next_page_token);
    assert.deepEqual(second.flatMap((r) => r.directories).map(label), ['b', 'c']);
  });

  test('a missing root is NOT_FOUND', async () => {
    await rejectsWith(getTree(digestOf(Buffer.from('no such root'))), Code.NOT_FOUND);
  });

  test('a forged or foreign page token is INVALID_ARGUMENT', async () => {
    await rejectsWith(getTree(root, 1, 'garbage!'), Code.INVALID_ARGUMENT, /page_token/);
    const other = await putDirectory({
      files: [{ name: 'z', digest: digestOf(Buffer.from('z')) }],
    });
    const token = (await getTree(root, 1)).at(-1)!.next_page_token;
    await rejectsWith(getTree(other, 1, token), Code.INVALID_ARGUMENT, /another root/);
  });

  test('a root that is not a Directory is INVALID_ARGUMENT', async () => {
    const junk = Buffer.from([0xff, 0xff, 0xff, 0xff]);
    await h.blobStore.put(digestOf(junk), junk);
    await rejectsWith(getTree(digestOf(junk)), Code.INVALID_ARGUMENT, /is not a Directory/);
  });
});
