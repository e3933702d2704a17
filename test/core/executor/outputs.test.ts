import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { digestKey, digestOf, type BlobDigest } from '../../../src-main/core/digest.js';
import { Code, GrpcError } from '../../../src-main/core/errors.js';
import { createFileCache } from '../../../src-main/core/filecache.js';
import {
  checkOutputPaths,
  collectOutputs,
  createOutputParents,
  outputPathsOf,
} from '../../../src-main/core/executor/outputs.js';
import {
  decode,
  type Command,
  type Command__Output,
  type Tree__Output,
} from '../../../src-main/core/proto/index.js';
import { createFakeContentStore, type FakeContentStore } from './fake-content-store.js';

let root: string;
let wd: string;
let outside: string;
let store: FakeContentStore;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'outputs-test-'));
  wd = join(root, 'ws');
  outside = join(root, 'outside');
  await mkdir(wd);
  await mkdir(outside);
  await writeFile(join(outside, 'secret'), 'not an output');
  store = createFakeContentStore();
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

function command(c: Command): Command__Output {
  return {
    arguments: [],
    environment_variables: [],
    output_files: [],
    output_directories: [],
    platform: null,
    working_directory: '',
    output_paths: [],
    output_node_properties: [],
    output_directory_format: 'TREE_ONLY',
    ...c,
  } as Command__Output;
}

const collect = (
  c: Command__Output,
  extra: { cache?: Awaited<ReturnType<typeof createFileCache>> } = {},
) => collectOutputs({ store, workingDir: wd, command: c, ...extra });

function treeOf(digest: BlobDigest | null | undefined): Tree__Output {
  assert.ok(digest);
  const bytes = store.blobs.get(digestKey(digest));
  assert.ok(bytes, 'the Tree blob was uploaded');
  return decode('build.bazel.remote.execution.v2.Tree', bytes);
}

async function write(rel: string, content: string, mode = 0o644): Promise<void> {
  await mkdir(join(wd, rel, '..'), { recursive: true });
  await writeFile(join(wd, rel), content, { mode });
}

describe('collectOutputs with output_paths', () => {
  test('files, directories and symlinks are reported by kind, symlinks not followed', async () => {
    await write('bin/tool', '#!/bin/sh\n', 0o755);
    await write('out/dir/a.txt', 'A');
    await write('out/dir/nested/b.txt', 'B');
    await mkdir(join(wd, 'out/dir/empty'));
    await symlink('nested/b.txt', join(wd, 'out/dir/link'));
    await symlink(outside, join(wd, 'escape'));
    const c = command({ output_paths: ['bin/tool', 'out/dir', 'escape', 'not/made'] });

    const out = await collect(c);

    assert.deepEqual(out.output_files, [
      { path: 'bin/tool', digest: digestOf(Buffer.from('#!/bin/sh\n')), is_executable: true },
    ]);
    assert.deepEqual(out.output_symlinks, [{ path: 'escape', target: outside }]);
    assert.deepEqual(out.output_file_symlinks, []);
    assert.equal(out.output_directories.length, 1);
    assert.equal(out.output_directories[0].path, 'out/dir');
    const tree = treeOf(out.output_directories[0].tree_digest as BlobDigest);
    assert.ok(tree.root);
    assert.deepEqual(
      tree.root.files.map((f) => [f.name, f.is_executable]),
      [['a.txt', false]],
    );
    assert.deepEqual(
      tree.root.directories.map((d) => d.name),
      ['empty', 'nested'],
    );
    assert.deepEqual(
      tree.root.symlinks.map((s) => [s.name, s.target]),
      [['link', 'nested/b.txt']],
    );
    assert.equal(tree.children.length, 2);
    assert.ok(store.blobs.has(digestKey(digestOf(Buffer.from('B')))));
    assert.ok(!store.blobs.has(digestKey(digestOf(Buffer.from('not an output')))));
    assert.equal(out.stats.files, 3);
  });

  test('the Tree digest is the same for equal contents created in another order', async () => {
    await write('one/z/file', 'z');
    await write('one/a/file', 'a');
    await write('one/m/file', 'a');
    await write('two/m/file', 'a');
    await write('two/a/file', 'a');
    await write('two/z/file', 'z');

    const first = await collect(command({ output_paths: ['one'] }));
    const second = await collect(command({ output_paths: ['two'] }));

    assert.deepEqual(
      first.output_directories[0].tree_digest,
      second.output_directories[0].tree_digest,
    );
    assert.equal(treeOf(first.output_directories[0].tree_digest as BlobDigest).children.length, 2);
  });

  test('only blobs the CAS lacks are uploaded', async () => {
    await write('out.txt', 'already there');
    store.put('already there');
    await write('new.txt', 'new!');

    const out = await collect(command({ output_paths: ['out.txt', 'new.txt'] }));

    assert.deepEqual(store.writes, [digestKey(digestOf(Buffer.from('new!')))]);
    assert.equal(out.stats.bytesUploaded, 4);
    const again = await collect(command({ output_paths: ['out.txt', 'new.txt'] }));
    assert.equal(again.stats.bytesUploaded, 0);
  });

  test('DIRECTORY_ONLY also uploads every Directory and sets root_directory_digest', async () => {
    await write('d/sub/f', 'f');
    const c = command({ output_paths: ['d'], output_directory_format: 'DIRECTORY_ONLY' });

    const out = await collect(c);

    const rootDigest = out.output_directories[0].root_directory_digest as BlobDigest;
    assert.ok(rootDigest);
    const rootDir = decode(
      'build.bazel.remote.execution.v2.Directory',
      store.blobs.get(digestKey(rootDigest))!,
    );
    assert.equal(rootDir.directories[0].name, 'sub');
    assert.ok(store.blobs.has(digestKey(rootDir.directories[0].digest as BlobDigest)));
  });

  test('a FIFO inside an output directory is INVALID_ARGUMENT naming it', async () => {
    await mkdir(join(wd, 'd'));
    execFileSync('mkfifo', [join(wd, 'd', 'pipe')]);

    const err = await collect(command({ output_paths: ['d'] })).catch((e) => e);

    assert.ok(err instanceof GrpcError);
    assert.equal(err.code, Code.INVALID_ARGUMENT);
    assert.match(err.message, /"d\/pipe" is a FIFO/);
  });

  test('an output whose parent leads outside the input root through a symlink is refused', async () => {
    await symlink(outside, join(wd, 'sneaky'));

    const err = await collect(command({ output_paths: ['sneaky/secret'] })).catch((e) => e);

    assert.equal(err.code, Code.INVALID_ARGUMENT);
    assert.equal(store.writes.length, 0);
  });

  test('output files are added to the file cache after upload', async () => {
    const cache = await createFileCache({ directory: join(root, 'cache'), maxSizeBytes: 1e6 });
    await write('o/x', 'cached output');

    await collect(command({ output_paths: ['o'] }), { cache });

    const digest = digestOf(Buffer.from('cached output'));
    assert.ok(await cache.linkInto({ digest, executable: false }, join(root, 'linked')));
  });
});

describe('collectOutputs with legacy output fields', () => {
  test('files and directories are collected, symlinks go to the legacy symlink fields', async () => {
    await write('f.txt', 'F');
    await write('d/inner', 'I');
    await symlink('f.txt', join(wd, 'flink'));
    await symlink('d', join(wd, 'dlink'));
    const c = command({
      output_files: ['f.txt', 'flink', 'missing.txt'],
      output_directories: ['d', 'dlink', 'missing-dir'],
    });

    const out = await collect(c);

    assert.deepEqual(
      out.output_files.map((f) => f.path),
      ['f.txt'],
    );
    assert.deepEqual(
      out.output_directories.map((d) => d.path),
      ['d'],
    );
    assert.deepEqual(out.output_file_symlinks, [{ path: 'flink', target: 'f.txt' }]);
    assert.deepEqual(out.output_directory_symlinks, [{ path: 'dlink', target: 'd' }]);
    assert.deepEqual(out.output_symlinks, []);
  });

  test('an output file that is a directory is FAILED_PRECONDITION', async () => {
    await mkdir(join(wd, 'x'));
    const err = await collect(command({ output_files: ['x'] })).catch((e) => e);
    assert.equal(err.code, Code.FAILED_PRECONDITION);
    assert.match(err.message, /Output file "x" is a directory/);
  });

  test('an output directory that is a file is FAILED_PRECONDITION', async () => {
    await write('x', 'file');
    const err = await collect(command({ output_directories: ['x'] })).catch((e) => e);
    assert.equal(err.code, Code.FAILED_PRECONDITION);
    assert.match(err.message, /Output directory "x" is a regular file/);
  });

  test('output_paths wins over the legacy fields', () => {
    const paths = outputPathsOf(
      command({ output_paths: ['a'], output_files: ['b'], output_directories: ['c'] }),
    );
    assert.deepEqual(paths, {
      paths: ['a'],
      legacyFiles: [],
      legacyDirectories: [],
      usesOutputPaths: true,
    });
  });
});

describe('checkOutputPaths', () => {
  const hostile: [string, Command][] = [
    ['an absolute output path', { output_paths: ['/etc/passwd'] }],
    ['a ".." segment', { output_paths: ['a/../../b'] }],
    ['an empty output path', { output_paths: [''] }],
    ['a trailing slash', { output_files: ['out/'] }],
    ['a bare ".."', { output_directories: ['..'] }],
    ['an escaping working directory', { working_directory: '../x' }],
    ['an absolute working directory', { working_directory: '/tmp' }],
    ['a path declared as file and directory', { output_files: ['x'], output_directories: ['x'] }],
  ];
  for (const [scenario, c] of hostile) {
    test(`${scenario} is INVALID_ARGUMENT`, () => {
      assert.throws(
        () => checkOutputPaths(command(c)),
        (err: unknown) => err instanceof GrpcError && err.code === Code.INVALID_ARGUMENT,
      );
    });
  }

  test('an empty legacy output directory (the working directory) is allowed', () => {
    checkOutputPaths(command({ output_directories: [''], working_directory: 'pkg/sub' }));
  });

  test('the message names the offending path', () => {
    assert.throws(() => checkOutputPaths(command({ output_paths: ['ok', 'a/../b'] })), {
      message: 'Invalid output path "a/../b": path contains ".."',
    });
  });
});

describe('createOutputParents', () => {
  test('a working directory missing from the input root is INVALID_ARGUMENT', async () => {
    const c = command({ working_directory: 'nowhere', output_paths: ['a/b'] });

    const err = await createOutputParents(c, join(wd, 'nowhere'), wd).catch((e) => e);

    assert.equal(err.code, Code.INVALID_ARGUMENT);
    assert.match(err.message, /working directory "nowhere"/);
  });

  test('creates output parents and legacy output directories', async () => {
    await createOutputParents(
      command({ output_files: ['a/b/file'], output_directories: ['c/d'] }),
      wd,
    );
    assert.ok((await stat(join(wd, 'a/b'))).isDirectory());
    assert.ok((await stat(join(wd, 'c/d'))).isDirectory());
    assert.deepEqual((await readdir(join(wd, 'a/b'))).length, 0);
  });

  test('with output_paths only parents are created', async () => {
    await createOutputParents(command({ output_paths: ['x/y/z'] }), wd);
    assert.ok((await stat(join(wd, 'x/y'))).isDirectory());
    assert.deepEqual(await readdir(join(wd, 'x/y')), []);
  });

  test('never creates directories through a symlink leading outside the input root', async () => {
    await symlink(outside, join(wd, 'out'));

    const err = await createOutputParents(command({ output_paths: ['out/new/file'] }), wd).catch(
      (e) => e,
    );

    assert.equal(err.code, Code.FAILED_PRECONDITION);
    assert.deepEqual(await readdir(outside), ['secret']);
  });
});
