import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code, GrpcError } from '../../src-main/core/errors.js';
import { lockDirectory } from '../../src-main/core/dir-lock.js';
import { startServer } from '../../src-main/core/server/server.js';

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'idlebuild-lock-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('a directory locked by a live process is refused, naming the process', () =>
  withDir(async (dir) => {
    const other = spawn('sleep', ['10']);
    try {
      await writeFile(join(dir, '.idlebuild.lock'), `${other.pid}\n`);
      await assert.rejects(
        lockDirectory(dir, 'build root'),
        (e: unknown) =>
          e instanceof GrpcError &&
          e.code === Code.FAILED_PRECONDITION &&
          e.message.includes(`pid ${other.pid}`) &&
          e.message.includes('--data-dir'),
      );
    } finally {
      other.kill();
    }
  }));

test('a lock left by a process that is gone is taken over and released', () =>
  withDir(async (dir) => {
    const gone = spawnSync('true').pid;
    await writeFile(join(dir, '.idlebuild.lock'), `${gone}\n`);
    const lock = await lockDirectory(dir, 'build root');
    assert.equal(
      (await readFile(join(dir, '.idlebuild.lock'), 'utf8')).trim(),
      String(process.pid),
    );
    await lock.release();
    assert.equal(existsSync(join(dir, '.idlebuild.lock')), false);
  }));

test('one process may lock the same directory for two roles', () =>
  withDir(async (dir) => {
    const first = await lockDirectory(dir, 'build root');
    const second = await lockDirectory(dir, 'file cache');
    await second.release();
    assert.equal(existsSync(join(dir, '.idlebuild.lock')), true, 'the first lock still holds');
    await first.release();
  }));

test('a second server on the same data directory fails before touching it', () =>
  withDir(async (dir) => {
    const first = await startServer({ port: 0, dataDirectory: dir });
    try {
      // Another process holds the first server's lock from now on.
      const other = spawn('sleep', ['10']);
      await writeFile(join(dir, '.idlebuild.lock'), `${other.pid}\n`);
      await writeFile(join(dir, 'tmp', 'in-flight-upload'), 'partial');
      await assert.rejects(startServer({ port: 0, dataDirectory: dir }), /is in use by another/);
      assert.equal(existsSync(join(dir, 'tmp', 'in-flight-upload')), true);
      other.kill();
    } finally {
      await first.close();
    }
  }));
