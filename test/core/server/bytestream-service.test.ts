import type * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { digestOf, EMPTY_SHA256, type BlobDigest } from '../../../src-main/core/digest.js';
import { Code } from '../../../src-main/core/errors.js';
import type {
  QueryWriteStatusResponse__Output,
  ReadResponse__Output,
  WriteRequest,
  WriteResponse__Output,
} from '../../../src-main/core/proto/index.js';
import {
  collect,
  rejectsWith,
  startStorageServer,
  unary,
  type StorageHarness,
} from './storage-harness.js';

const MiB = 1024 * 1024;

let h: StorageHarness;
before(async () => {
  h = await startStorageServer();
});
after(() => h.close());

const readName = (d: BlobDigest) => `blobs/${d.hash}/${d.size_bytes}`;
const uploadName = (d: BlobDigest, id = randomUUID()) =>
  `inst/uploads/${id}/blobs/${d.hash}/${d.size_bytes}`;

const read = (resource_name: string, read_offset = 0, read_limit = 0) =>
  collect<ReadResponse__Output>(h.bytestream.Read({ resource_name, read_offset, read_limit }));
const queryWriteStatus = (resource_name: string) =>
  unary<QueryWriteStatusResponse__Output>((cb) =>
    h.bytestream.QueryWriteStatus({ resource_name }, cb),
  );
const isMissing = async (d: BlobDigest) => h.blobStore.findMissing([d]).length > 0;

/** Opens a Write stream; `done` settles with its response. */
function openWrite() {
  let call!: grpc.ClientWritableStream<WriteRequest>;
  const done = unary<WriteResponse__Output>((cb) => {
    call = h.bytestream.Write(cb);
  });
  return { call, done };
}

/** Writes `data` in `chunk`-sized requests from `offset`, finishing the write. */
async function writeBlob(
  name: string,
  data: Buffer,
  opts: { chunk?: number; offset?: number } = {},
) {
  const { call, done } = openWrite();
  const chunk = opts.chunk ?? MiB;
  let offset = opts.offset ?? 0;
  do {
    const piece = data.subarray(offset, offset + chunk);
    const last = offset + piece.length >= data.length;
    const ok = call.write({
      resource_name: name,
      write_offset: offset,
      data: piece,
      finish_write: last,
    });
    if (!ok) await new Promise((resolve) => call.once('drain', resolve));
    offset += piece.length;
  } while (offset < data.length);
  call.end();
  return done;
}

const concat = (responses: ReadResponse__Output[]) => Buffer.concat(responses.map((r) => r.data));

describe('ByteStream service', () => {
  test('a 64 MiB blob written in 1 MiB chunks reads back whole and by range', async () => {
    const data = randomBytes(64 * MiB);
    const digest = digestOf(data);
    const res = await writeBlob(uploadName(digest), data);
    assert.equal(res.committed_size, data.length);
    assert.equal(await isMissing(digest), false);

    const whole = await read(readName(digest));
    assert.ok(
      whole.every((r) => r.data.length <= MiB),
      'every chunk is at most 1 MiB',
    );
    const hash = createHash('sha256');
    for (const r of whole) hash.update(r.data);
    assert.equal(hash.digest('hex'), digest.hash);

    const offset = 10 * MiB + 123;
    const limit = 3 * MiB + 7;
    assert.deepEqual(
      concat(await read(readName(digest), offset, limit)),
      data.subarray(offset, offset + limit),
    );
    const tail = await read(readName(digest), data.length - 5);
    assert.deepEqual(concat(tail), data.subarray(data.length - 5));
  });

  test('a resumed write continues from committed_size after the stream is cancelled', async () => {
    const data = randomBytes(5 * MiB);
    const digest = digestOf(data);
    const name = uploadName(digest);

    // Send three chunks, wait until the server has committed them, cancel
    const { call, done } = openWrite();
    for (let i = 0; i < 3; i++)
      call.write({
        resource_name: name,
        write_offset: i * MiB,
        data: data.subarray(i * MiB, (i + 1) * MiB),
      });
    for (
      let i = 0;
      i < 200 && (await queryWriteStatus(name).catch(() => undefined))?.committed_size !== 3 * MiB;
      i++
    )
      await sleep(10);
    call.cancel();
    await rejectsWith(done, Code.CANCELLED);

    // The server kept the committed bytes
    const status = await queryWriteStatus(name);
    assert.deepEqual(status, { committed_size: 3 * MiB, complete: false });

    // Resuming at the wrong offset is refused; at committed_size it completes
    await rejectsWith(
      writeBlob(name, data, { offset: MiB }),
      Code.INVALID_ARGUMENT,
      /committed size/,
    );
    const res = await writeBlob(name, data, { offset: 3 * MiB });
    assert.equal(res.committed_size, data.length);
    assert.deepEqual(await queryWriteStatus(name), { committed_size: data.length, complete: true });
    assert.deepEqual(concat(await read(readName(digest))), data);
  });

  test('a resumed write whose bytes do not match the digest is rejected at finish', async () => {
    const data = randomBytes(2 * MiB);
    const digest = digestOf(data);
    const name = uploadName(digest);
    const { call, done } = openWrite();
    call.write({ resource_name: name, write_offset: 0, data: data.subarray(0, MiB) });
    call.end();
    assert.equal(
      (await done).committed_size,
      MiB,
      'a write ended without finish_write keeps its bytes',
    );

    const tampered = Buffer.from(data);
    tampered[MiB + 5] ^= 0xff;
    await rejectsWith(
      writeBlob(name, tampered, { offset: MiB }),
      Code.INVALID_ARGUMENT,
      /does not match/,
    );
    assert.equal(await isMissing(digest), true);
    await rejectsWith(queryWriteStatus(name), Code.NOT_FOUND);
  });

  test('a write with a wrong digest is INVALID_ARGUMENT and stores nothing', async () => {
    const tmpBefore = await readdir(join(h.directory, 'tmp'));
    const claimed = digestOf(Buffer.from('the promised bytes'));
    const tooLong = uploadName(claimed);
    await rejectsWith(
      writeBlob(tooLong, Buffer.from('more bytes than the digest promised')),
      Code.INVALID_ARGUMENT,
      /more than the blob's size/,
    );
    const sameSize = uploadName(claimed);
    await rejectsWith(
      writeBlob(sameSize, Buffer.from('the promised bytez')),
      Code.INVALID_ARGUMENT,
      /does not match its digest/,
    );
    assert.equal(await isMissing(claimed), true);
    await rejectsWith(read(readName(claimed)), Code.NOT_FOUND);
    await rejectsWith(queryWriteStatus(tooLong), Code.NOT_FOUND);
    await rejectsWith(queryWriteStatus(sameSize), Code.NOT_FOUND);
    assert.deepEqual(
      await readdir(join(h.directory, 'tmp')),
      tmpBefore,
      'no temporary file is left',
    );
  });

  test('writing a blob that is already stored ends at once with its full size', async () => {
    const data = Buffer.from('already here');
    const digest = digestOf(data);
    await h.blobStore.put(digest, data);
    const { call, done } = openWrite();
    call.write({ resource_name: uploadName(digest), write_offset: 0, data: data.subarray(0, 3) });
    assert.equal((await done).committed_size, data.length);
    call.end();
  });

  test('the empty blob can be written and read', async () => {
    const empty = { hash: EMPTY_SHA256, size_bytes: 0 };
    const res = await writeBlob(uploadName(empty), Buffer.alloc(0));
    assert.equal(res.committed_size, 0);
    assert.deepEqual(concat(await read(readName(empty))), Buffer.alloc(0));
  });

  test('a Write stream that another stream resumed is ABORTED and cannot corrupt the blob', async () => {
    const data = randomBytes(3 * MiB);
    const digest = digestOf(data);
    const name = uploadName(digest);
    const chunk = (i: number) => data.subarray(i * MiB, (i + 1) * MiB);
    const committed = async (size: number) => {
      for (let i = 0; i < 200; i++) {
        if ((await queryWriteStatus(name).catch(() => undefined))?.committed_size === size) return;
        await sleep(10);
      }
      assert.fail(`committed_size never reached ${size}`);
    };

    // The first stream stalls after one chunk; a second one resumes it
    const first = openWrite();
    first.call.write({ resource_name: name, write_offset: 0, data: chunk(0) });
    await committed(MiB);
    const second = openWrite();
    second.call.write({ resource_name: name, write_offset: MiB, data: chunk(1) });
    await committed(2 * MiB);

    // The stalled stream wakes up and is refused; the second one finishes
    first.call.write({ resource_name: name, write_offset: MiB, data: chunk(1) });
    await rejectsWith(first.done, Code.ABORTED, /Another Write stream/);
    second.call.write({
      resource_name: name,
      write_offset: 2 * MiB,
      data: chunk(2),
      finish_write: true,
    });
    second.call.end();
    assert.equal((await second.done).committed_size, data.length);
    assert.deepEqual(concat(await read(readName(digest))), data);
  });

  test('a reader that cancels mid-blob does not disturb later reads', async () => {
    const data = randomBytes(8 * MiB);
    const digest = digestOf(data);
    await h.blobStore.put(digest, data);
    const stream = h.bytestream.Read({ resource_name: readName(digest) });
    const ended = new Promise<number>((resolve) => {
      stream.on('error', (err: grpc.ServiceError) => resolve(err.code));
      stream.on('end', () => resolve(Code.OK));
    });
    stream.once('data', () => stream.cancel());
    assert.equal(await ended, Code.CANCELLED);
    assert.deepEqual(concat(await read(readName(digest), 5, 10)), data.subarray(5, 15));
  });

  test('reading a missing blob is NOT_FOUND', async () => {
    await rejectsWith(
      read(readName(digestOf(Buffer.from('missing')))),
      Code.NOT_FOUND,
      /not in the CAS/,
    );
  });

  test('read offsets and limits are checked', async () => {
    const data = Buffer.from('0123456789');
    const digest = digestOf(data);
    await h.blobStore.put(digest, data);
    assert.deepEqual(concat(await read(readName(digest), 4, 3)), Buffer.from('456'));
    assert.deepEqual(concat(await read(readName(digest), 8, 100)), Buffer.from('89'));
    assert.deepEqual(concat(await read(readName(digest), 10)), Buffer.alloc(0));
    await rejectsWith(read(readName(digest), 11), Code.OUT_OF_RANGE);
    await rejectsWith(read(readName(digest), -1), Code.OUT_OF_RANGE);
    await rejectsWith(read(readName(digest), 0, -1), Code.INVALID_ARGUMENT);
  });

  test('QueryWriteStatus of an unknown upload is NOT_FOUND', async () => {
    await rejectsWith(queryWriteStatus(uploadName(digestOf(Buffer.from('never')))), Code.NOT_FOUND);
  });

  test('a first write_offset other than 0 for a new upload is INVALID_ARGUMENT', async () => {
    const data = Buffer.from('offset test');
    await rejectsWith(
      writeBlob(uploadName(digestOf(data)), data, { offset: 2 }),
      Code.INVALID_ARGUMENT,
    );
  });

  test('a resource name that changes mid-stream is INVALID_ARGUMENT', async () => {
    const data = Buffer.from('two names');
    const digest = digestOf(data);
    const { call, done } = openWrite();
    call.write({ resource_name: uploadName(digest), write_offset: 0, data: data.subarray(0, 3) });
    call.write({
      resource_name: uploadName(digest),
      write_offset: 3,
      data: data.subarray(3),
      finish_write: true,
    });
    call.end();
    await rejectsWith(done, Code.INVALID_ARGUMENT, /differs/);
  });

  test('hostile and compressed resource names are INVALID_ARGUMENT and touch no file', async () => {
    const before = await readdir(h.directory);
    const tmpBefore = await readdir(join(h.directory, 'tmp'));
    const hash = 'c'.repeat(64);
    for (const name of [
      `../../blobs/${hash}/1`,
      `blobs/../${hash}/1`,
      `/etc/passwd`,
      `compressed-blobs/zstd/${hash}/1`,
    ])
      await rejectsWith(read(name), Code.INVALID_ARGUMENT);
    for (const name of [
      `uploads/../../x/blobs/${hash}/1`,
      `uploads/u/compressed-blobs/zstd/${hash}/1`,
    ]) {
      await rejectsWith(writeBlob(name, Buffer.from('x')), Code.INVALID_ARGUMENT);
      await rejectsWith(queryWriteStatus(name), Code.INVALID_ARGUMENT);
    }
    await rejectsWith(
      read(`compressed-blobs/zstd/${hash}/1`),
      Code.INVALID_ARGUMENT,
      /no compressors/,
    );
    assert.deepEqual(await readdir(h.directory), before);
    assert.deepEqual(await readdir(join(h.directory, 'tmp')), tmpBefore);
  });
});
