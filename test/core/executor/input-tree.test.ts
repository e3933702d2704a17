import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeDirectory } from '../../../src-main/core/cas/tree.js';
import { digestKey, digestOf, type BlobDigest } from '../../../src-main/core/digest.js';
import { Code, GrpcError } from '../../../src-main/core/errors.js';
import { createFileCache } from '../../../src-main/core/filecache.js';
import { materializeInputRoot } from '../../../src-main/core/executor/input-tree.js';
import { encode, unpackAny, type Directory } from '../../../src-main/core/proto/index.js';
import { createFakeContentStore, type FakeContentStore } from './fake-content-store.js';

let root: string;
let ws: string;
let sentinel: string;
let store: FakeContentStore;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'input-tree-test-'));
  ws = join(root, 'ws');
  sentinel = join(root, 'sentinel');
  await mkdir(ws);
  await mkdir(sentinel);
  await writeFile(join(sentinel, 'keep'), 'untouched');
  store = createFakeContentStore();
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const file = (name: string, digest: BlobDigest, is_executable = false) => ({
  name,
  digest,
  is_executable,
});
const dirNode = (name: string, digest: BlobDigest) => ({ name, digest });
const link = (name: string, target: string) => ({ name, target });
const mode = async (path: string) => (await stat(path)).mode & 0o777;

async function assertNothingWritten(): Promise<void> {
  assert.deepEqual(await readdir(ws), []);
  assert.deepEqual(await readdir(sentinel), ['keep']);
  assert.equal(await readFile(join(sentinel, 'keep'), 'utf8'), 'untouched');
  assert.deepEqual((await readdir(root)).sort(), ['sentinel', 'ws']);
}

function materialize(
  rootDigest: BlobDigest,
  extra: { cache?: Awaited<ReturnType<typeof createFileCache>>; dir?: string } = {},
) {
  return materializeInputRoot({ store, rootDigest, dir: extra.dir ?? ws, cache: extra.cache });
}

function preconditionViolations(err: unknown) {
  assert.ok(err instanceof GrpcError);
  assert.equal(err.details.length, 1);
  const failure = unpackAny('google.rpc.PreconditionFailure', err.details[0]);
  assert.ok(failure);
  return failure.violations;
}

describe('materializeInputRoot', () => {
  test('nested directories, executable bits, symlinks and empty files land on disk', async () => {
    const tool = store.put('#!/bin/sh\necho hi\n');
    const text = store.put('hello');
    const empty = digestOf(Buffer.alloc(0));
    const deep = store.putDirectory({ files: [file('leaf.txt', text)] });
    const sub = store.putDirectory({
      files: [file('empty', empty), file('run.sh', tool, true)],
      directories: [dirNode('deeper', deep), dirNode('void', digestOf(Buffer.alloc(0)))],
      symlinks: [link('up', '../a.txt')],
    });
    const top = store.putDirectory({
      files: [file('a.txt', text)],
      directories: [dirNode('sub', sub)],
      symlinks: [link('to-leaf', 'sub/deeper/leaf.txt')],
    });

    const stats = await materialize(top);

    assert.equal(await readFile(join(ws, 'a.txt'), 'utf8'), 'hello');
    assert.equal(await readFile(join(ws, 'sub/deeper/leaf.txt'), 'utf8'), 'hello');
    assert.equal(await readFile(join(ws, 'sub/run.sh'), 'utf8'), '#!/bin/sh\necho hi\n');
    assert.equal(await mode(join(ws, 'sub/run.sh')), 0o555);
    assert.equal(await mode(join(ws, 'a.txt')), 0o444);
    assert.equal((await stat(join(ws, 'sub/empty'))).size, 0);
    assert.ok((await stat(join(ws, 'sub/void'))).isDirectory());
    assert.equal(await readlink(join(ws, 'sub/up')), '../a.txt');
    assert.equal(await readlink(join(ws, 'to-leaf')), 'sub/deeper/leaf.txt');
    assert.equal(await readFile(join(ws, 'to-leaf'), 'utf8'), 'hello');
    assert.deepEqual(
      { ...stats, durationMs: 0 },
      {
        directories: 4,
        files: 4,
        symlinks: 2,
        bytesDownloaded: 5 + 18,
        filesDownloaded: 2,
        cacheHits: 0,
        durationMs: 0,
      },
    );
  });

  test('a large file is streamed to disk and a repeated file is downloaded once', async () => {
    const big = Buffer.alloc(3 * 1024 * 1024, 7);
    const bigDigest = store.put(big);
    const small = store.put('same');
    const top = store.putDirectory({
      files: [file('big.bin', bigDigest), file('copy1', small), file('copy2', small)],
    });

    const stats = await materialize(top);

    assert.ok((await readFile(join(ws, 'big.bin'))).equals(big));
    assert.equal(await readFile(join(ws, 'copy2'), 'utf8'), 'same');
    assert.equal(store.calls.readToFile, 1);
    assert.equal(store.reads.filter((k) => k === digestKey(small)).length, 1);
    assert.equal(stats.filesDownloaded, 2);
  });

  test('a Directory stored in non-canonical form is fetched by digest and verified', async () => {
    const text = store.put('x');
    // A FileNode with is_executable=false written explicitly (field 4, value 0).
    const node = Buffer.concat([
      encode('build.bazel.remote.execution.v2.FileNode', file('f', text)),
      Buffer.from([0x20, 0x00]),
    ]);
    const raw = Buffer.concat([Buffer.from([0x0a, node.length]), node]);
    const sub = store.putRaw(raw);
    assert.notEqual(
      digestKey(sub),
      digestKey(encodeDirectory({ files: [file('f', text)] }).digest),
    );
    const top = store.putDirectory({ directories: [dirNode('sub', sub)] });

    await materialize(top);

    assert.equal(await readFile(join(ws, 'sub/f'), 'utf8'), 'x');
    assert.ok(store.reads.includes(digestKey(sub)));
  });

  test('unix_mode and mtime from node properties are applied to a private copy', async () => {
    const cache = await createFileCache({ directory: join(root, 'cache'), maxSizeBytes: 1e6 });
    const text = store.put('mode me');
    const top = store.putDirectory({
      files: [
        {
          ...file('f', text),
          node_properties: { unix_mode: { value: 0o640 }, mtime: { seconds: 1_000_000, nanos: 0 } },
        },
      ],
    });

    await materialize(top, { cache });

    const st = await stat(join(ws, 'f'));
    assert.equal(st.mode & 0o777, 0o640);
    assert.equal(st.mtimeMs, 1_000_000_000);
    assert.equal(st.nlink, 1);
    assert.equal(await mode(join(root, 'cache', text.hash)), 0o444);
  });

  test('a second materialization links every file from the cache', async () => {
    const cache = await createFileCache({ directory: join(root, 'cache'), maxSizeBytes: 1e7 });
    const a = store.put('aaa');
    const b = store.put('bbb');
    const sub = store.putDirectory({ files: [file('b', b, true)] });
    const top = store.putDirectory({ files: [file('a', a)], directories: [dirNode('sub', sub)] });

    const first = await materialize(top, { cache });
    const ws2 = join(root, 'ws2');
    await mkdir(ws2);
    const readsBefore = store.reads.length;
    const second = await materialize(top, { cache, dir: ws2 });

    assert.equal(first.cacheHits, 0);
    assert.equal(second.cacheHits, 2);
    assert.equal(second.filesDownloaded, 0);
    assert.equal(second.bytesDownloaded, 0);
    assert.equal(store.reads.length, readsBefore);
    assert.equal((await stat(join(ws2, 'a'))).ino, (await stat(join(root, 'cache', a.hash))).ino);
    const cachedB = join(root, 'cache', `${b.hash}.executable`);
    assert.equal((await stat(join(ws2, 'sub/b'))).ino, (await stat(cachedB)).ino);
    assert.equal(await mode(join(ws2, 'sub/b')), 0o555);
  });
});

describe('materializeInputRoot with missing blobs', () => {
  test('missing files and directories are one FAILED_PRECONDITION with one MISSING violation each', async () => {
    const gone1 = digestOf(Buffer.from('gone one'));
    const gone2 = digestOf(Buffer.from('gone two'));
    const present = store.put('here');
    const goneDir = encodeDirectory({ files: [file('x', present)] }).digest;
    const top = store.putDirectory({
      files: [file('a', gone1), file('b', gone1), file('c', gone2), file('d', present)],
      directories: [dirNode('lost', goneDir)],
    });

    const err = await materialize(top).catch((e) => e);

    assert.ok(err instanceof GrpcError, String(err));
    assert.equal(err.code, Code.FAILED_PRECONDITION);
    const subjects = preconditionViolations(err).map((v) => {
      assert.equal(v.type, 'MISSING');
      return v.subject;
    });
    assert.deepEqual(
      subjects.sort(),
      [gone1, gone2, goneDir].map((d) => `blobs/${d.hash}/${d.size_bytes}`).sort(),
    );
    assert.match(err.message, /3 blobs are missing/);
    await assertNothingWritten();
  });

  test('missing files found after cache lookups are reported together', async () => {
    const gone1 = digestOf(Buffer.from('gone one'));
    const gone2 = digestOf(Buffer.from('gone two'));
    const top = store.putDirectory({ files: [file('a', gone1), file('b', gone2)] });

    const err = await materialize(top).catch((e) => e);

    assert.equal(err.code, Code.FAILED_PRECONDITION);
    assert.equal(preconditionViolations(err).length, 2);
    assert.match(preconditionViolations(err)[0].description, /Input file "[ab]"/);
  });

  test('a missing input root is one MISSING violation', async () => {
    const top = encodeDirectory({ files: [file('a', store.put('a'))] }).digest;

    const err = await materialize(top).catch((e) => e);

    assert.equal(err.code, Code.FAILED_PRECONDITION);
    const violations = preconditionViolations(err);
    assert.deepEqual(
      violations.map((v) => v.subject),
      [`blobs/${top.hash}/${top.size_bytes}`],
    );
    await assertNothingWritten();
  });
});

describe('materializeInputRoot with a hostile input root', () => {
  const text = () => store.put('payload');
  const cases: [string, () => Directory][] = [
    ['a name ".."', () => ({ files: [file('..', text())] })],
    ['a name "."', () => ({ directories: [dirNode('.', digestOf(Buffer.alloc(0)))] })],
    ['an empty name', () => ({ files: [file('', text())] })],
    ['a name with "/"', () => ({ files: [file('a/../../sentinel/keep', text())] })],
    ['unsorted files', () => ({ files: [file('b', text()), file('a', text())] })],
    ['a duplicate name', () => ({ files: [file('a', text()), file('a', text())] })],
    ['an absolute symlink', () => ({ symlinks: [link('l', '/etc/passwd')] })],
    ['a symlink leaving the root', () => ({ symlinks: [link('l', 'x/../../sentinel')] })],
    [
      'a symlink and a directory of the same name',
      () => ({
        directories: [dirNode('a', store.putDirectory({ files: [file('keep', text())] }))],
        symlinks: [link('a', '../sentinel')],
      }),
    ],
  ];
  for (const [scenario, build] of cases) {
    test(`${scenario} is INVALID_ARGUMENT and nothing is written`, async () => {
      const top = store.putDirectory(build());

      const err = await materialize(top).catch((e) => e);

      assert.ok(err instanceof GrpcError, String(err));
      assert.equal(err.code, Code.INVALID_ARGUMENT);
      assert.match(err.message, /^Invalid input root: /);
      await assertNothingWritten();
    });
  }

  test('an escaping symlink deep in the tree is named by its path', async () => {
    const sub = store.putDirectory({ symlinks: [link('l', '../../x')] });
    const top = store.putDirectory({ directories: [dirNode('src', sub)] });

    const err = await materialize(top).catch((e) => e);

    assert.equal(err.code, Code.INVALID_ARGUMENT);
    assert.match(
      err.message,
      /symlink "src\/l": symlink target "\.\.\/\.\.\/x" leaves the input root/,
    );
    await assertNothingWritten();
  });

  test('a bad name in a subdirectory names the directory', async () => {
    const sub = store.putDirectory({ files: [file('a/../b', text())] });
    const top = store.putDirectory({ directories: [dirNode('src', sub)] });

    const err = await materialize(top).catch((e) => e);

    assert.equal(
      err.message,
      'Invalid input root: entry "a/../b" in directory "src": name contains "/"',
    );
  });

  test('an existing symlink in the workspace is never written through', async () => {
    await symlink(sentinel, join(ws, 'a'));
    const sub = store.putDirectory({ files: [file('evil', text())] });
    const top = store.putDirectory({ directories: [dirNode('a', sub)] });

    const err = await materialize(top).catch((e) => e);

    assert.ok(err instanceof GrpcError);
    assert.equal(err.code, Code.INTERNAL);
    assert.deepEqual(await readdir(sentinel), ['keep']);
    assert.ok((await lstat(join(ws, 'a'))).isSymbolicLink());
  });
});
