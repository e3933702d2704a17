import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Code } from '../../../src-main/core/errors.js';
import { createPartialUploads } from '../../../src-main/core/server/partial-uploads.js';

let dir: string;
let n = 0;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'idlebuild-uploads-'));
});
after(() => rm(dir, { recursive: true, force: true }));

const paths: string[] = [];
function registry(idleTimeoutMs = 60_000) {
  return createPartialUploads({
    tempPath: () => {
      const path = join(dir, `upload-${n++}`);
      paths.push(path);
      return path;
    },
    idleTimeoutMs,
  });
}

describe('partial uploads', () => {
  test('appends land in order and finish hands over the file', async () => {
    const uploads = registry();
    const owner = Symbol();
    const upload = uploads.claim('k', 0, owner, 10);
    await upload.append(owner, 0, Buffer.from('hello'));
    await upload.append(owner, 5, Buffer.from('world'));
    assert.equal(await uploads.committedSize('k'), 10);
    const path = await upload.finish(owner);
    assert.equal(await readFile(path, 'utf8'), 'helloworld');
    assert.equal(await uploads.committedSize('k'), undefined);
  });

  test('a second stream fences the first, which gets ABORTED', async () => {
    const uploads = registry();
    const first = Symbol('first');
    const second = Symbol('second');
    const a = uploads.claim('k', 0, first, 100);
    await a.append(first, 0, Buffer.from('abc'));
    const b = uploads.claim('k', 3, second, 100);
    await assert.rejects(a.append(first, 3, Buffer.from('zzz')), { code: Code.ABORTED });
    assert.equal(await b.append(second, 3, Buffer.from('def')), 6);
    assert.equal(await readFile(await b.finish(second), 'utf8'), 'abcdef');
  });

  test('offset 0 starts an existing upload over; a wrong offset is INVALID_ARGUMENT', async () => {
    const uploads = registry();
    const owner = Symbol();
    const upload = uploads.claim('k', 0, owner, 100);
    await upload.append(owner, 0, Buffer.from('stale bytes'));
    await assert.rejects(upload.append(owner, 2, Buffer.from('x')), {
      code: Code.INVALID_ARGUMENT,
    });
    const again = uploads.claim('k', 0, owner, 100);
    await again.append(owner, 0, Buffer.from('fresh'));
    assert.equal(await readFile(await again.finish(owner), 'utf8'), 'fresh');
    assert.throws(() => uploads.claim('new', 4, owner, 100), { code: Code.INVALID_ARGUMENT });
  });

  test('bytes beyond the blob size discard the upload', async () => {
    const uploads = registry();
    const owner = Symbol();
    const upload = uploads.claim('k', 0, owner, 4);
    await assert.rejects(upload.append(owner, 0, Buffer.from('too long')), {
      code: Code.INVALID_ARGUMENT,
    });
    assert.equal(await uploads.committedSize('k'), undefined);
    assert.equal(existsSync(paths.at(-1)!), false);
  });

  test('an idle, unowned upload is discarded when another upload is claimed', async () => {
    const uploads = registry(0);
    const owner = Symbol();
    const idle = uploads.claim('idle', 0, owner, 10);
    await idle.append(owner, 0, Buffer.from('abc'));
    const idlePath = paths.at(-1)!;
    idle.release(owner);
    await new Promise((resolve) => setTimeout(resolve, 5));
    uploads.claim('other', 0, Symbol(), 10);
    assert.equal(await uploads.committedSize('idle'), undefined);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(existsSync(idlePath), false);
    await uploads.close();
  });
});
