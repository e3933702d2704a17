import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { digestOf } from '../../src-main/core/digest.js';
import { createFileCache, type FileCacheKey } from '../../src-main/core/filecache.js';
import { Code, GrpcError } from '../../src-main/core/errors.js';

let root: string;
let cacheDir: string;
let counter = 0;

/** Writes content to a fresh source file and returns its path and cache key. */
async function source(content: string, executable = false): Promise<[string, FileCacheKey]> {
  const path = join(root, `src-${counter++}`);
  await writeFile(path, content, { mode: executable ? 0o755 : 0o644 });
  return [path, { digest: digestOf(Buffer.from(content)), executable }];
}

async function addContent(
  cache: Awaited<ReturnType<typeof createFileCache>>,
  content: string,
  executable = false,
): Promise<FileCacheKey> {
  const [path, key] = await source(content, executable);
  await cache.add(key, path);
  return key;
}

const dest = () => join(root, `dest-${counter++}`);
const mode = async (path: string) => (await stat(path)).mode & 0o777;
const tenBytes = (c: string) => c.repeat(10);

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'filecache-test-'));
  cacheDir = join(root, 'cache');
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('file cache', () => {
  test('a hit links the cached file into the workspace, a miss returns false', async () => {
    const cache = await createFileCache({ directory: cacheDir, maxSizeBytes: 1000 });
    const key = await addContent(cache, 'hello');
    const out = dest();

    assert.equal(await cache.linkInto(key, out), true);
    assert.equal(await readFile(out, 'utf8'), 'hello');
    const entry = await stat(join(cacheDir, key.digest.hash));
    assert.equal((await stat(out)).ino, entry.ino, 'hardlinked, not copied');
    assert.equal(await mode(out), 0o444, 'read-only through the hardlink');

    const missing = { digest: digestOf(Buffer.from('other')), executable: false };
    assert.equal(await cache.linkInto(missing, dest()), false);
    assert.deepEqual(cache.stats(), {
      entries: 1,
      bytes: 5,
      maxBytes: 1000,
      hits: 1,
      misses: 1,
      evictions: 0,
    });
  });

  test('executable and non-executable copies of one content are distinct entries', async () => {
    const cache = await createFileCache({ directory: cacheDir, maxSizeBytes: 1000 });
    // The same source file for both: the second add must not chmod the first entry.
    const [path, plain] = await source('#!/bin/sh\necho hi\n');
    const exec = { ...plain, executable: true };
    await cache.add(plain, path);
    await cache.add(exec, path);

    assert.equal(await mode(join(cacheDir, plain.digest.hash)), 0o444);
    assert.equal(await mode(join(cacheDir, `${plain.digest.hash}.executable`)), 0o555);
    const [a, b] = [dest(), dest()];
    assert.equal(await cache.linkInto(plain, a), true);
    assert.equal(await cache.linkInto(exec, b), true);
    assert.equal(await mode(a), 0o444);
    assert.equal(await mode(b), 0o555);
    assert.equal(cache.stats().entries, 2);
  });

  test('least recently used entries are evicted first when over the limit', async () => {
    const cache = await createFileCache({ directory: cacheDir, maxSizeBytes: 30 });
    const a = await addContent(cache, tenBytes('a'));
    const b = await addContent(cache, tenBytes('b'));
    const c = await addContent(cache, tenBytes('c'));
    assert.equal(await cache.linkInto(a, dest()), true); // a is now the most recent

    await addContent(cache, tenBytes('d'));
    assert.equal(existsSync(join(cacheDir, b.digest.hash)), false, 'b was least recently used');
    assert.equal(await cache.linkInto(b, dest()), false);
    assert.equal(await cache.linkInto(a, dest()), true);
    assert.equal(await cache.linkInto(c, dest()), true);
    assert.equal(cache.stats().evictions, 1);
    assert.equal(cache.stats().bytes, 30);
  });

  test('a pinned entry survives eviction pressure until released', async () => {
    const cache = await createFileCache({ directory: cacheDir, maxSizeBytes: 20 });
    const a = await addContent(cache, tenBytes('a'));
    const b = await addContent(cache, tenBytes('b'));
    const release = cache.pin([a]);
    const releaseAgain = cache.pin([a]); // pins nest

    await addContent(cache, tenBytes('c'));
    await addContent(cache, tenBytes('d'));
    assert.equal(await cache.linkInto(a, dest()), true, 'pinned entry kept');
    assert.equal(await cache.linkInto(b, dest()), false);

    release();
    release(); // releasing twice counts once
    await addContent(cache, tenBytes('e'));
    assert.equal(await cache.linkInto(a, dest()), true, 'still pinned once');
    releaseAgain();
    await addContent(cache, tenBytes('f'));
    await addContent(cache, tenBytes('g'));
    assert.equal(await cache.linkInto(a, dest()), false, 'evicted once unpinned');
  });

  test('a file larger than the whole cache is not added', async () => {
    const cache = await createFileCache({ directory: cacheDir, maxSizeBytes: 5 });
    const small = await addContent(cache, 'abc');
    const big = await addContent(cache, 'way too large');
    assert.equal(await cache.linkInto(big, dest()), false);
    assert.equal(await cache.linkInto(small, dest()), true, 'nothing evicted for it');
    assert.deepEqual(await readdir(join(cacheDir, '_tmp')), []);
  });

  test('a source whose size disagrees with its digest is rejected', async () => {
    const cache = await createFileCache({ directory: cacheDir, maxSizeBytes: 100 });
    const [path, key] = await source('content');
    const wrong = { ...key, digest: { ...key.digest, size_bytes: 3 } };
    await assert.rejects(cache.add(wrong, path), (err: GrpcError) => {
      assert.equal(err.code, Code.INVALID_ARGUMENT);
      assert.match(err.message, /has 7 bytes but its digest says 3/);
      return true;
    });
    assert.equal(cache.stats().entries, 0);
  });

  test('a restarted cache keeps its entries and their LRU order', async () => {
    const first = await createFileCache({ directory: cacheDir, maxSizeBytes: 30 });
    const a = await addContent(first, tenBytes('a'));
    const b = await addContent(first, tenBytes('b'));
    const c = await addContent(first, tenBytes('c'));
    assert.equal(await first.linkInto(a, dest()), true);
    const x = await addContent(first, 'x', true);
    // A leftover from a crash mid-add is cleaned up at startup.
    await writeFile(join(cacheDir, '_tmp', 'partial'), 'half');

    const second = await createFileCache({ directory: cacheDir, maxSizeBytes: 30 });
    assert.equal(second.stats().entries, 3, 'b was evicted for x before the restart');
    assert.equal(second.stats().bytes, 21);
    assert.deepEqual(await readdir(join(cacheDir, '_tmp')), []);
    assert.equal(await second.linkInto(x, dest()), true);

    await addContent(second, tenBytes('d'));
    assert.equal(await second.linkInto(b, dest()), false);
    assert.equal(await second.linkInto(c, dest()), false, 'c was the oldest after the restart');
    assert.equal(await second.linkInto(a, dest()), true);
  });

  test('a restarted cache with a smaller limit evicts down to it', async () => {
    const first = await createFileCache({ directory: cacheDir, maxSizeBytes: 100 });
    const a = await addContent(first, tenBytes('a'));
    const b = await addContent(first, tenBytes('b'));
    const second = await createFileCache({ directory: cacheDir, maxSizeBytes: 15 });
    assert.equal(second.stats().evictions, 1);
    assert.equal(await second.linkInto(a, dest()), false);
    assert.equal(await second.linkInto(b, dest()), true);
  });

  test('linking into another filesystem falls back to a copy', async (t) => {
    const shm = '/dev/shm';
    if (!existsSync(shm) || (await stat(shm)).dev === (await stat(tmpdir())).dev) {
      t.skip('no second filesystem at /dev/shm');
      return;
    }
    const cache = await createFileCache({ directory: cacheDir, maxSizeBytes: 1000 });
    const key = await addContent(cache, 'copied across', true);
    const other = await mkdtemp(join(shm, 'filecache-test-'));
    try {
      const out = join(other, 'tool');
      assert.equal(await cache.linkInto(key, out), true);
      assert.equal(await readFile(out, 'utf8'), 'copied across');
      assert.equal(await mode(out), 0o555);
      assert.deepEqual(await readdir(other), ['tool'], 'no temporary copy left behind');

      // Adding from the other filesystem copies too.
      const foreign = join(other, 'foreign');
      await writeFile(foreign, 'from shm');
      const fkey = { digest: digestOf(Buffer.from('from shm')), executable: false };
      await cache.add(fkey, foreign);
      assert.equal(await mode(join(cacheDir, fkey.digest.hash)), 0o444);
      assert.equal(await cache.linkInto(fkey, dest()), true);
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });

  test('concurrent adds of one key leave exactly one complete entry', async () => {
    // Two instances over one directory race like two processes would.
    const cache = await createFileCache({ directory: cacheDir, maxSizeBytes: 1_000_000 });
    const other = await createFileCache({ directory: cacheDir, maxSizeBytes: 1_000_000 });
    const content = 'z'.repeat(100_000);
    const sources = await Promise.all(Array.from({ length: 8 }, () => source(content)));
    await Promise.all([
      ...sources.map(([path, key]) => cache.add(key, path)),
      ...sources.map(([path, key]) => other.add(key, path)),
    ]);

    const key = sources[0][1];
    for (const c of [cache, other]) {
      assert.equal(c.stats().entries, 1);
      assert.equal(c.stats().bytes, content.length);
    }
    assert.deepEqual((await readdir(cacheDir)).sort(), [key.digest.hash, '_tmp']);
    const out = dest();
    assert.equal(await other.linkInto(key, out), true);
    assert.equal(await readFile(out, 'utf8'), content);
  });

  test('an entry removed behind the cache is a miss, not an error', async () => {
    const cache = await createFileCache({ directory: cacheDir, maxSizeBytes: 100 });
    const key = await addContent(cache, 'gone soon');
    await rm(join(cacheDir, key.digest.hash));
    assert.equal(await cache.linkInto(key, dest()), false);
    assert.equal(cache.stats().entries, 0);
  });

  test('linking to a destination whose directory is missing fails with context', async () => {
    const cache = await createFileCache({ directory: cacheDir, maxSizeBytes: 100 });
    const key = await addContent(cache, 'abc');
    await mkdir(join(root, 'ws'));
    await assert.rejects(cache.linkInto(key, join(root, 'ws', 'no', 'file')), (err: GrpcError) => {
      assert.equal(err.code, Code.INTERNAL);
      assert.match(err.message, /^Failed to link cached file/);
      return true;
    });
  });
});
