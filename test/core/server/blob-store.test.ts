import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { digestOf, EMPTY_SHA256 } from '../../../src-main/core/digest.js';
import { Code, GrpcError } from '../../../src-main/core/errors.js';
import { createBlobStore } from '../../../src-main/core/server/blob-store.js';

const dirs: string[] = [];
async function freshDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'idlebuild-blobstore-'));
  dirs.push(dir);
  return dir;
}
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe('blob store', () => {
  test('a put blob is found, read whole and streamed from an offset', async () => {
    const directory = await freshDir();
    const store = await createBlobStore({ directory });
    const data = Buffer.from('hello, content-addressable world');
    const digest = digestOf(data);

    assert.deepEqual(store.findMissing([digest]), [digest]);
    await store.put(digest, data);
    assert.deepEqual(store.findMissing([digest]), []);
    assert.deepEqual(await store.get(digest), data);
    assert.deepEqual(await readAll(store.createReadStream(digest, 7)!), data.subarray(7));
    const onDisk = join(directory, 'cas', digest.hash.slice(0, 2), digest.hash);
    assert.deepEqual(await readFile(onDisk), data);
  });

  test('a blob whose bytes do not match its digest is rejected and not stored', async () => {
    const directory = await freshDir();
    const store = await createBlobStore({ directory });
    const digest = digestOf(Buffer.from('the real content'));
    const wrong = Buffer.from('something else');

    await assert.rejects(store.put(digest, wrong), (err: GrpcError) => {
      assert.equal(err.code, Code.INVALID_ARGUMENT);
      const got = digestOf(wrong);
      assert.equal(
        err.message,
        `Blob "${digest.hash}/${digest.size_bytes}" does not match its digest: ` +
          `got "${got.hash}/${got.size_bytes}"`,
      );
      return true;
    });
    assert.deepEqual(store.findMissing([digest]), [digest]);
    assert.equal(existsSync(join(directory, 'cas', digest.hash.slice(0, 2), digest.hash)), false);
    assert.deepEqual(await readdir(join(directory, 'tmp')), []);
  });

  test('a right hash with a wrong size is a mismatch too', async () => {
    const store = await createBlobStore({ directory: await freshDir() });
    const data = Buffer.from('sized');
    const digest = { hash: digestOf(data).hash, size_bytes: 6 };
    await assert.rejects(store.put(digest, data), { code: Code.INVALID_ARGUMENT });
    assert.equal(await store.get(digest), undefined);
  });

  test('putFile verifies a temporary file and moves it into place', async () => {
    const directory = await freshDir();
    const store = await createBlobStore({ directory });
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const digest = digestOf(data);
    const temp = store.tempPath();
    await writeFile(temp, data);
    await store.putFile(digest, temp);
    assert.equal(existsSync(temp), false);
    assert.deepEqual(await store.get(digest), data);

    const bad = store.tempPath();
    await writeFile(bad, data.subarray(1));
    await assert.rejects(store.putFile(digestOf(randomBytes(8)), bad), {
      code: Code.INVALID_ARGUMENT,
    });
    assert.equal(existsSync(bad), false, 'the rejected temporary file is removed');
  });

  test('streams hand out chunks of at most 1 MiB', async () => {
    const store = await createBlobStore({ directory: await freshDir() });
    const data = randomBytes(2 * 1024 * 1024 + 5);
    const digest = digestOf(data);
    await store.put(digest, data);
    const sizes: number[] = [];
    for await (const chunk of store.createReadStream(digest)!) sizes.push((chunk as Buffer).length);
    assert.ok(
      sizes.every((s) => s <= 1024 * 1024),
      `chunk sizes ${sizes}`,
    );
    assert.equal(
      sizes.reduce((a, b) => a + b, 0),
      data.length,
    );
  });

  test('concurrent puts of one digest store it once, intact', async () => {
    const directory = await freshDir();
    const store = await createBlobStore({ directory });
    const data = randomBytes(256 * 1024);
    const digest = digestOf(data);
    await Promise.all(Array.from({ length: 8 }, () => store.put(digest, data)));
    assert.deepEqual(await store.get(digest), data);
    assert.deepEqual(await readdir(join(directory, 'tmp')), []);
  });

  test('the empty blob is always present', async () => {
    const store = await createBlobStore({ directory: await freshDir() });
    const empty = { hash: EMPTY_SHA256, size_bytes: 0 };
    assert.deepEqual(store.findMissing([empty]), []);
    assert.deepEqual(await store.get(empty), Buffer.alloc(0));
    assert.deepEqual(await readAll(store.createReadStream(empty)!), Buffer.alloc(0));
  });

  test('blobs survive a restart and stale temporary files are removed', async () => {
    const directory = await freshDir();
    const first = await createBlobStore({ directory });
    const data = Buffer.from('persisted');
    const digest = digestOf(data);
    await first.put(digest, data);
    await writeFile(first.tempPath(), 'half-written upload');

    const second = await createBlobStore({ directory });
    assert.deepEqual(second.findMissing([digest]), []);
    assert.deepEqual(await second.get(digest), data);
    assert.deepEqual(await readdir(join(directory, 'tmp')), []);
  });

  test('a blob corrupted on disk is dropped instead of served', async () => {
    const directory = await freshDir();
    const data = Buffer.from('will be corrupted');
    const digest = digestOf(data);
    const path = join(directory, 'cas', digest.hash.slice(0, 2), digest.hash);
    const store = await createBlobStore({ directory });
    await store.put(digest, data);
    await writeFile(path, 'will be Corrupted');

    assert.equal(await store.get(digest), undefined);
    assert.deepEqual(store.findMissing([digest]), [digest]);
    assert.equal(existsSync(path), false);
  });

  test('stray files in the CAS directory are ignored at startup', async () => {
    const directory = await freshDir();
    await mkdir(join(directory, 'cas', 'zz'), { recursive: true });
    await writeFile(join(directory, 'cas', 'zz', 'not-a-blob'), 'x');
    const store = await createBlobStore({ directory });
    assert.deepEqual(store.findMissing([{ hash: EMPTY_SHA256, size_bytes: 0 }]), []);
  });

  test('a malformed digest is INVALID_ARGUMENT', async () => {
    const store = await createBlobStore({ directory: await freshDir() });
    await assert.rejects(store.put({ hash: 'ABC', size_bytes: 3 }, Buffer.from('abc')), {
      code: Code.INVALID_ARGUMENT,
    });
  });
});
