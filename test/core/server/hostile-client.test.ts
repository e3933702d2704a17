// The embedded server against a hostile or broken client: raw garbage
// instead of protobuf, malformed digests, abusive ByteStream uploads,
// poisoned Action Cache entries, forged PublishOperations, misused leases, a
// storm of cancelled Executes, and hostile Commands and input roots that
// reach a real executor. Every attack must end in a clear gRPC status while
// the server keeps serving, loses no task, writes nothing outside its data
// directory (or the executor's workspace) and corrupts no cache entry.
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { digestOf, type BlobDigest } from '../../../src-main/core/digest.js';
import { startExecutor, type Executor } from '../../../src-main/core/executor/executor.js';
import {
  encode,
  grpcPackage,
  type ActionResult,
  type BatchUpdateBlobsResponse__Output,
  type ByteStreamClient,
  type Directory,
  type FindMissingBlobsResponse__Output,
  type Operation,
  type Operation__Output,
  type QueryWriteStatusResponse__Output,
  type WriteRequest,
  type WriteResponse__Output,
} from '../../../src-main/core/proto/index.js';
import {
  startServer,
  type EmbeddedServer,
  type ServerOptions,
} from '../../../src-main/core/server/server.js';
import { testConfig, testIdentity } from '../executor/executor-harness.js';
import { ReapiClient } from '../executor/reapi-client.js';
import {
  completedOp,
  responseOf,
  sleep,
  stageOf,
  TestClient,
  TestExecutor,
  untilDone,
  type Inbox,
} from './scheduler-harness.js';
import { collect, rejectsWith, unary } from './storage-harness.js';

const { status: Code } = grpc;
const V2 = '/build.bazel.remote.execution.v2';
const WRITE = '/google.bytestream.ByteStream/Write';

// ---------------------------------------------------------------- the target

interface Target {
  server: EmbeddedServer;
  /** Holds nothing but the data directory, so writes beside it show. */
  parent: string;
  data: string;
  /** A bare channel for sending bytes that are not protobuf. */
  raw: grpc.Client;
  client: TestClient;
  bytestream: ByteStreamClient;
  stop(): Promise<void>;
}

async function startTarget(overrides: Partial<ServerOptions> = {}): Promise<Target> {
  const parent = await mkdtemp(join(tmpdir(), 'idlebuild-hostile-'));
  const data = join(parent, 'data');
  const server = await startServer({
    port: 0,
    dataDirectory: data,
    leaseDurationMs: 1000,
    leaseGraceMs: 1000,
    reconnectGraceMs: 100,
    abandonGraceMs: 100,
    ...overrides,
  });
  const creds = grpc.credentials.createInsecure();
  const raw = new grpc.Client(server.address, creds);
  const client = new TestClient(server.address);
  const bytestream = new (grpcPackage().google.bytestream.ByteStream)(server.address, creds);
  return {
    server,
    parent,
    data,
    raw,
    client,
    bytestream,
    stop: async () => {
      raw.close();
      client.close();
      bytestream.close();
      await server.close(0);
      await rm(parent, { recursive: true, force: true });
    },
  };
}

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

/**
 * Nothing beside the data directory; inside it only the stores; every CAS
 * blob's bytes hash to its name and every Action Cache entry is named by a
 * digest.
 */
async function assertContained(t: Target): Promise<void> {
  assert.deepEqual(await readdir(t.parent), ['data']);
  const stores = new Set(['ac', 'cas', 'tmp', '.idlebuild.lock']);
  for (const name of await readdir(t.data)) assert.ok(stores.has(name), `unexpected "${name}"`);
  const cas = join(t.data, 'cas');
  for (const prefix of await readdir(cas)) {
    for (const name of await readdir(join(cas, prefix))) {
      assert.equal(name.slice(0, 2), prefix);
      assert.equal(sha256(await readFile(join(cas, prefix, name))), name, `blob ${name} corrupt`);
    }
  }
  for (const name of await readdir(join(t.data, 'ac'))) assert.match(name, /^[0-9a-f]{64}-\d+$/);
}

async function isStored(t: Target, digest: BlobDigest): Promise<boolean> {
  const res = await unary<FindMissingBlobsResponse__Output>((cb) =>
    t.client.cas.FindMissingBlobs({ blob_digests: [digest] }, cb),
  );
  return res.missing_blob_digests.length === 0;
}

async function readBlob(t: Target, digest: BlobDigest): Promise<Buffer> {
  const res = await unary<{ responses: { data: Buffer; status: { code: number } | null }[] }>(
    (cb) => t.client.cas.BatchReadBlobs({ digests: [digest] }, cb),
  );
  assert.equal(res.responses[0].status?.code, Code.OK);
  return res.responses[0].data;
}

// ---------------------------------------------------------------- raw calls

const identity = (b: Buffer) => b;
type Outcome = grpc.ServiceError | undefined;

function rawUnary(t: Target, path: string, bytes: Buffer): Promise<Outcome> {
  return new Promise((resolve) =>
    t.raw.makeUnaryRequest(path, identity, identity, bytes, (err) => resolve(err ?? undefined)),
  );
}

function rawClientStream(t: Target, path: string, messages: Buffer[]): Promise<Outcome> {
  return new Promise((resolve) => {
    const call = t.raw.makeClientStreamRequest(path, identity, identity, (err) =>
      resolve(err ?? undefined),
    );
    for (const m of messages) call.write(m);
    call.end();
  });
}

function settled(call: grpc.ClientReadableStream<Buffer>): Promise<Outcome> {
  return new Promise((resolve) => {
    call.on('data', () => {});
    call.on('error', (err: grpc.ServiceError) => resolve(err));
    call.on('end', () => resolve(undefined));
  });
}

const rawServerStream = (t: Target, path: string, bytes: Buffer) =>
  settled(t.raw.makeServerStreamRequest(path, identity, identity, bytes));

function rawBidi(t: Target, path: string, messages: Buffer[]): Promise<Outcome> {
  const call = t.raw.makeBidiStreamRequest(path, identity, identity);
  for (const m of messages) call.write(m);
  call.end();
  return settled(call);
}

function assertRejectedBytes(outcome: Outcome, path: string): void {
  assert.ok(outcome, `${path} accepted bytes that are not its request message`);
  assert.ok(
    outcome.code === Code.INTERNAL || outcome.code === Code.INVALID_ARGUMENT,
    `${path}: code ${outcome.code} (${outcome.details})`,
  );
}

// ---------------------------------------------------------------- ByteStream

const uploadName = (d: BlobDigest) => `uploads/${randomUUID()}/blobs/${d.hash}/${d.size_bytes}`;

/** Opens a Write stream; `done` settles with its response. */
function openWrite(t: Target) {
  let call!: grpc.ClientWritableStream<WriteRequest>;
  const done = unary<WriteResponse__Output>((cb) => {
    call = t.bytestream.Write(cb);
  });
  return { call, done };
}

/** Sends `requests` on one Write stream and half-closes it. */
function write(t: Target, requests: WriteRequest[]): Promise<WriteResponse__Output> {
  const { call, done } = openWrite(t);
  for (const r of requests) call.write(r);
  call.end();
  return done;
}

const queryWriteStatus = (t: Target, resource_name: string) =>
  unary<QueryWriteStatusResponse__Output>((cb) =>
    t.bytestream.QueryWriteStatus({ resource_name }, cb),
  );

async function committed(t: Target, name: string, size: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await queryWriteStatus(t, name).catch(() => undefined))?.committed_size === size) return;
    await sleep(10);
  }
  assert.fail(`committed_size of "${name}" never reached ${size}`);
}

/** A fresh blob uploads over ByteStream and reads back intact. */
async function assertUploadWorks(t: Target, data = randomBytes(100), name?: string) {
  const digest = digestOf(data);
  const res = await write(t, [
    { resource_name: name ?? uploadName(digest), write_offset: 0, data, finish_write: true },
  ]);
  assert.equal(res.committed_size, data.length);
  assert.deepEqual(await readBlob(t, digest), data);
}

// ---------------------------------------------------------------- storage attacks

describe('hostile client against the storage services', () => {
  let t: Target;
  before(async () => {
    t = await startTarget();
  });
  after(() => t.stop());

  test('garbage and truncated protobuf bytes on every service get an error status, and the server serves on', async () => {
    // Each request ends in bytes or a nested message, so that cutting it
    // short breaks it (protobufjs quietly shortens a top-level string).
    const digest = digestOf(Buffer.alloc(64, 1));
    const long = 'x'.repeat(40);
    const calls: [string, 'unary' | 'client' | 'server' | 'bidi', Buffer][] = [
      [
        `${V2}.ContentAddressableStorage/BatchUpdateBlobs`,
        'unary',
        encode('build.bazel.remote.execution.v2.BatchUpdateBlobsRequest', {
          requests: [{ digest, data: Buffer.alloc(64, 1) }],
        }),
      ],
      [
        `${V2}.ContentAddressableStorage/FindMissingBlobs`,
        'unary',
        encode('build.bazel.remote.execution.v2.FindMissingBlobsRequest', {
          blob_digests: [digest],
        }),
      ],
      [
        `${V2}.ActionCache/UpdateActionResult`,
        'unary',
        encode('build.bazel.remote.execution.v2.UpdateActionResultRequest', {
          action_digest: digest,
        }),
      ],
      [
        '/scheduler.Scheduler/ScheduleTask',
        'unary',
        encode('scheduler.ScheduleTaskRequest', { task_id: long, metadata: { os: long } }),
      ],
      [
        WRITE,
        'client',
        encode('google.bytestream.WriteRequest', { resource_name: long, data: Buffer.alloc(40) }),
      ],
      [
        `${V2}.Execution/PublishOperation`,
        'client',
        encode('google.longrunning.Operation', {
          name: long,
          metadata: { type_url: long, value: Buffer.alloc(40) },
        }),
      ],
      [
        `${V2}.Execution/Execute`,
        'server',
        encode('build.bazel.remote.execution.v2.ExecuteRequest', { action_digest: digest }),
      ],
      [
        `${V2}.ContentAddressableStorage/GetTree`,
        'server',
        encode('build.bazel.remote.execution.v2.GetTreeRequest', { root_digest: digest }),
      ],
      [
        '/scheduler.Scheduler/LeaseTask',
        'bidi',
        encode('scheduler.LeaseTaskRequest', {
          task_id: long,
          re_enqueue_reason: { code: 1, message: long },
        }),
      ],
      [
        '/scheduler.Scheduler/RegisterAndStreamWork',
        'bidi',
        encode('scheduler.RegisterAndStreamWorkRequest', {
          register_executor_request: { node: { host: long } },
        }),
      ],
    ];
    const garbage = Buffer.alloc(12, 0xff);
    for (const [path, kind, request] of calls) {
      // The request cut inside its last field, and bytes that are no message.
      for (const bytes of [request.subarray(0, request.length - 3), garbage]) {
        const outcome =
          kind === 'unary'
            ? await rawUnary(t, path, bytes)
            : kind === 'client'
              ? await rawClientStream(t, path, [bytes])
              : kind === 'server'
                ? await rawServerStream(t, path, bytes)
                : await rawBidi(t, path, [bytes]);
        assertRejectedBytes(outcome, path);
      }
    }
    assert.equal(await isStored(t, digest), false);
    await assertUploadWorks(t);
    await assertContained(t);
  });

  test('a Write broken by garbage after a valid chunk can be resumed from QueryWriteStatus', async () => {
    const data = Buffer.from('a blob whose upload is interrupted by garbage');
    const digest = digestOf(data);
    const name = uploadName(digest);
    const first = encode('google.bytestream.WriteRequest', {
      resource_name: name,
      write_offset: 0,
      data: data.subarray(0, 8),
    });
    assertRejectedBytes(await rawClientStream(t, WRITE, [first, Buffer.alloc(12, 0xff)]), WRITE);
    assert.equal(await isStored(t, digest), false);

    // Whatever the server committed, a client resuming from it finishes the blob.
    await sleep(20);
    const offset = (await queryWriteStatus(t, name).catch(() => undefined))?.committed_size ?? 0;
    assert.ok(offset === 0 || offset === 8, `committed_size ${offset}`);
    const res = await write(t, [
      {
        resource_name: name,
        write_offset: offset,
        data: data.subarray(offset),
        finish_write: true,
      },
    ]);
    assert.equal(res.committed_size, data.length);
    assert.deepEqual(await readBlob(t, digest), data);
  });

  test('digests with a huge or negative size or a hostile hash are INVALID_ARGUMENT everywhere and touch no file', async () => {
    const good = digestOf(Buffer.from('a well-formed blob'));
    const bad = [
      { hash: good.hash, size_bytes: 2 ** 62 },
      { hash: good.hash, size_bytes: -1 },
      { hash: good.hash.toUpperCase(), size_bytes: good.size_bytes },
      { hash: 'z'.repeat(64), size_bytes: 1 },
      { hash: '../../etc/passwd', size_bytes: 1 },
      { hash: `../../${good.hash.slice(6)}`, size_bytes: 1 },
    ];
    const { cas, ac, execution } = t.client;
    const blob = Buffer.from('a well-formed blob');
    for (const d of bad) {
      const why = `digest ${JSON.stringify(d)}`;
      const invalid = (p: Promise<unknown>) => rejectsWith(p, Code.INVALID_ARGUMENT).catch(fail);
      const fail = (err: Error) => assert.fail(`${why}: ${err.message}`);
      await invalid(unary((cb) => cas.FindMissingBlobs({ blob_digests: [d] }, cb)));
      await invalid(unary((cb) => cas.BatchReadBlobs({ digests: [d] }, cb)));
      await invalid(collect(cas.GetTree({ root_digest: d })));
      await invalid(unary((cb) => ac.GetActionResult({ action_digest: d }, cb)));
      await invalid(
        unary((cb) => ac.UpdateActionResult({ action_digest: d, action_result: {} }, cb)),
      );
      const referencing = { output_files: [{ path: 'out', digest: d }] };
      await invalid(
        unary((cb) =>
          ac.UpdateActionResult({ action_digest: good, action_result: referencing }, cb),
        ),
      );
      await invalid(collect(execution.Execute({ action_digest: d })));
      const updated = await unary<BatchUpdateBlobsResponse__Output>((cb) =>
        cas.BatchUpdateBlobs({ requests: [{ digest: d, data: blob }] }, cb),
      );
      assert.equal(updated.responses[0].status?.code, Code.INVALID_ARGUMENT, why);

      const path = `blobs/${d.hash}/${d.size_bytes}`;
      await invalid(collect(t.bytestream.Read({ resource_name: path })));
      const upload = `uploads/${randomUUID()}/${path}`;
      await invalid(write(t, [{ resource_name: upload, data: blob, finish_write: true }]));
      await invalid(queryWriteStatus(t, upload));
    }
    assert.equal(existsSync(join(t.data, 'etc')), false);
    await assertContained(t);
  });

  test('a Write declaring 10 GiB that sends a few bytes and half-closes stores nothing', async () => {
    const huge = { hash: sha256(Buffer.from('never sent')), size_bytes: 10 * 2 ** 30 };
    const name = uploadName(huge);
    const res = await write(t, [
      { resource_name: name, write_offset: 0, data: Buffer.from('abc') },
    ]);
    assert.equal(res.committed_size, 3);
    assert.deepEqual(await queryWriteStatus(t, name), { committed_size: 3, complete: false });
    assert.equal(await isStored(t, huge), false);
    await assertUploadWorks(t);
    await assertContained(t);
  });

  test('bytes beyond the declared size are INVALID_ARGUMENT; the same name then uploads correctly', async () => {
    const data = Buffer.from('four');
    const digest = digestOf(data);
    const name = uploadName(digest);
    const tooMuch = { resource_name: name, data: Buffer.from('four and more'), finish_write: true };
    await rejectsWith(write(t, [tooMuch]), Code.INVALID_ARGUMENT, /more than the blob's size/);
    assert.equal(await isStored(t, digest), false);
    await rejectsWith(queryWriteStatus(t, name), Code.NOT_FOUND);
    await assertUploadWorks(t, data, name);
  });

  test('a finish_write short of the declared size stores nothing; the same name then uploads correctly', async () => {
    const data = Buffer.from('a blob sent only in part');
    const digest = digestOf(data);
    const name = uploadName(digest);
    const short = { resource_name: name, data: data.subarray(0, 5), finish_write: true };
    await rejectsWith(write(t, [short]), Code.INVALID_ARGUMENT, /does not match its digest/);
    assert.equal(await isStored(t, digest), false);
    await assertUploadWorks(t, data, name);
    await assertContained(t);
  });

  test('a write_offset that jumps is INVALID_ARGUMENT and the upload resumes from committed_size', async () => {
    const data = Buffer.from('offsets that jump around');
    const digest = digestOf(data);
    const name = uploadName(digest);
    const jump = [
      { resource_name: name, write_offset: 0, data: data.subarray(0, 4) },
      { resource_name: name, write_offset: 10, data: data.subarray(10) },
    ];
    await rejectsWith(write(t, jump), Code.INVALID_ARGUMENT, /committed size 4/);
    for (const write_offset of [2 ** 62, -1, 3])
      await rejectsWith(
        write(t, [{ resource_name: name, write_offset, data: data.subarray(4) }]),
        Code.INVALID_ARGUMENT,
      );
    assert.deepEqual(await queryWriteStatus(t, name), { committed_size: 4, complete: false });
    const rest = {
      resource_name: name,
      write_offset: 4,
      data: data.subarray(4),
      finish_write: true,
    };
    assert.equal((await write(t, [rest])).committed_size, data.length);
    assert.deepEqual(await readBlob(t, digest), data);
  });

  test('concurrent Writes of one name: a bad claim fences nobody, a wrong restart aborts the other and stores nothing', async () => {
    const data = randomBytes(64);
    const digest = digestOf(data);
    const name = uploadName(digest);
    const chunk = (from: number, to: number, finish_write = false) => ({
      resource_name: name,
      write_offset: from,
      data: data.subarray(from, to),
      finish_write,
    });
    const a = openWrite(t);
    a.call.write(chunk(0, 16));
    await committed(t, name, 16);

    // A stream claiming at an offset that is not committed_size is refused
    // without taking the upload from the stream that holds it.
    await rejectsWith(
      write(t, [{ resource_name: name, write_offset: 999, data: Buffer.from('x') }]),
      Code.INVALID_ARGUMENT,
      /committed size/,
    );
    a.call.write(chunk(16, 32));
    await committed(t, name, 32);

    // A second stream restarts at 0 with the wrong bytes: its finish fails
    // verification, and the first stream is fenced off.
    const wrong = { resource_name: name, data: Buffer.alloc(64, 7), finish_write: true };
    await rejectsWith(write(t, [wrong]), Code.INVALID_ARGUMENT, /does not match its digest/);
    a.call.write(chunk(32, 64, true));
    a.call.end();
    await rejectsWith(a.done, Code.ABORTED);
    assert.equal(await isStored(t, digest), false);

    await assertUploadWorks(t, data, name);
    await assertContained(t);
  });

  test('BatchUpdateBlobs of 1,000 tiny blobs with one corrupt stores the 999 others', async () => {
    const requests = Array.from({ length: 1000 }, (_, i) => {
      const data = Buffer.from(`tiny blob ${i} ${randomUUID()}`);
      return { digest: digestOf(data), data };
    });
    const corrupt = 617;
    requests[corrupt] = { ...requests[corrupt], data: Buffer.from('not what the digest says') };
    const res = await unary<BatchUpdateBlobsResponse__Output>((cb) =>
      t.client.cas.BatchUpdateBlobs({ requests }, cb),
    );
    assert.equal(res.responses.length, 1000);
    res.responses.forEach((r, i) => {
      assert.equal(r.digest?.hash, requests[i].digest.hash);
      assert.equal(r.status?.code, i === corrupt ? Code.INVALID_ARGUMENT : Code.OK, `blob ${i}`);
    });
    const missing = await unary<FindMissingBlobsResponse__Output>((cb) =>
      t.client.cas.FindMissingBlobs({ blob_digests: requests.map((r) => r.digest) }, cb),
    );
    assert.deepEqual(
      missing.missing_blob_digests.map((d) => d.hash),
      [requests[corrupt].digest.hash],
    );
    await assertContained(t);
  });

  test('an ActionResult naming absent blobs is never a hit, and one with a hostile output path is refused', async () => {
    const { ac } = t.client;
    const present = digestOf(Buffer.from('present output'));
    await t.client.upload([Buffer.from('present output')]);
    const action = digestOf(Buffer.from(`action ${randomUUID()}`));
    const absent = digestOf(Buffer.from('never uploaded'));
    const dangling = { output_files: [{ path: 'out', digest: absent }] };
    await unary((cb) =>
      ac.UpdateActionResult({ action_digest: action, action_result: dangling }, cb),
    );
    await rejectsWith(
      unary((cb) => ac.GetActionResult({ action_digest: action }, cb)),
      Code.NOT_FOUND,
      /not in the CAS/,
    );

    const hostile: ActionResult[] = [
      { output_files: [{ path: '../x', digest: present }] },
      { output_files: [{ path: '/etc/passwd', digest: present }] },
      { output_directories: [{ path: 'out/../../d', tree_digest: present }] },
      { output_symlinks: [{ path: '../link', target: 'anywhere' }] },
      { output_file_symlinks: [{ path: 'a//b', target: 'x' }] },
    ];
    for (const action_result of hostile) {
      const poisoned = digestOf(Buffer.from(`poisoned ${randomUUID()}`));
      await rejectsWith(
        unary((cb) => ac.UpdateActionResult({ action_digest: poisoned, action_result }, cb)),
        Code.INVALID_ARGUMENT,
        /output path/,
      );
      await rejectsWith(
        unary((cb) => ac.GetActionResult({ action_digest: poisoned }, cb)),
        Code.NOT_FOUND,
      );
    }
    await assertContained(t);
  });
});

// ---------------------------------------------------------------- execution attacks

/** Reads an Execute stream's Operations until the done one. */
async function doneOp(inbox: Inbox<Operation__Output>, timeoutMs = 3000) {
  for (;;) {
    const op = await inbox.next(timeoutMs);
    if (op.done) return op;
  }
}

function publishAs(t: Target, ops: Operation[]): Promise<Outcome> {
  const execution = t.client.execution;
  return new Promise((resolve) => {
    const call = execution.PublishOperation((err) => resolve(err ?? undefined));
    for (const op of ops) call.write(op);
    call.end();
  });
}

describe('hostile client against execution and the scheduler', () => {
  let t: Target;
  let executor: TestExecutor | undefined;
  let client: TestClient;
  before(async () => {
    t = await startTarget();
  });
  // Each test's client leaves; whatever it still watched is abandoned.
  afterEach(async () => {
    client.close();
    executor?.close();
    executor = undefined;
    for (let i = 0; i < 100 && t.server.queueLength() > 0; i++) await sleep(10);
  });
  after(() => t.stop());

  async function connectExecutor(): Promise<TestExecutor> {
    client = new TestClient(t.server.address);
    executor = new TestExecutor(t.server.address);
    await executor.ready();
    return executor;
  }

  test('an Action blob that is not an Action, and a ScheduleTask with a garbage task, are INVALID_ARGUMENT', async () => {
    await connectExecutor();
    const notAnAction = Buffer.alloc(12, 0xff);
    await client.upload([notAnAction]);
    await rejectsWith(
      collect(client.execution.Execute({ action_digest: digestOf(notAnAction) })),
      Code.INVALID_ARGUMENT,
      /Failed to parse the Action/,
    );
    const sched = executor!.scheduler;
    const scheduled = {
      task_id: `/uploads/${randomUUID()}/blobs/${sha256(notAnAction)}/12`,
      metadata: { os: 'linux', arch: 'amd64', task_size: { estimated_milli_cpu: 300 } },
      serialized_task: notAnAction,
    };
    await rejectsWith(
      unary((cb) => sched.ScheduleTask(scheduled, cb)),
      Code.INVALID_ARGUMENT,
      /ExecutionTask/,
    );
    assert.equal(t.server.queueLength(), 0);
  });

  // The trust model of PublishOperation is written at createExecutionService:
  // any caller may publish, but only well-formed results for known names.
  test('PublishOperation from a client without a lease: unknown or malformed COMPLETEDs are refused and the execution still completes', async () => {
    const exec = await connectExecutor();
    const { actionDigest } = await client.uploadAction({ args: ['forged', randomUUID()] });
    const ops = client.execute(actionDigest);
    const name = (await ops.next()).name;
    const result = { exit_code: 0 };

    const unknown = `/uploads/${randomUUID()}/blobs/${actionDigest.hash}/${actionDigest.size_bytes}`;
    const outcome = await publishAs(t, [completedOp(unknown, actionDigest, result)]);
    assert.equal(outcome?.code, Code.NOT_FOUND);

    const completed = completedOp(name, actionDigest, result);
    const undecodable = {
      type_url: 'type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse',
      value: Buffer.alloc(9, 0xff),
    };
    const malformed: Operation[] = [
      { ...completed, response: undecodable },
      { ...completed, response: undefined },
      completedOp(name, actionDigest, { output_files: [{ path: '../x', digest: actionDigest }] }),
      completedOp(name, actionDigest, {
        stdout_digest: { hash: '../../etc/passwd', size_bytes: 1 },
      }),
    ];
    for (const op of malformed) {
      const refused = await publishAs(t, [op]);
      assert.equal(refused?.code, Code.INVALID_ARGUMENT, refused?.details);
    }
    await ops.expectNothing(50);

    // The real executor's result is the one the client and the cache get.
    const lease = exec.lease(await exec.nextReservation());
    await lease.responses.next();
    assert.equal(await exec.publish([completedOp(name, actionDigest, result)]), undefined);
    assert.equal(await lease.finalize(), true);
    const done = await doneOp(ops);
    assert.equal(stageOf(done), 'COMPLETED');
    assert.equal(responseOf(done)?.status?.code ?? 0, Code.OK);
    assert.equal(responseOf(done)?.result?.exit_code, 0);
    const hit = await client.getActionResult(actionDigest);
    assert.equal((hit as grpc.ServiceError).code, undefined, 'the executor result is cached');
  });

  test('LeaseTask misuse: empty or unknown task, then finalize twice and a keep-alive after finalize', async () => {
    const exec = await connectExecutor();
    for (const task_id of ['', `/uploads/${randomUUID()}/blobs/${'a'.repeat(64)}/1`]) {
      const lease = exec.lease(task_id);
      const err = await lease.responses.closed();
      assert.equal(err?.code, task_id ? Code.NOT_FOUND : Code.INVALID_ARGUMENT);
    }

    const { actionDigest } = await client.uploadAction({ args: ['finalize', randomUUID()] });
    const ops = client.execute(actionDigest);
    const taskId = await exec.nextReservation();
    const lease = exec.lease(taskId);
    await lease.responses.next();
    assert.equal(
      await exec.publish([completedOp(taskId, actionDigest, { exit_code: 0 })]),
      undefined,
    );
    lease.send({ finalize: true });
    lease.send({ finalize: true });
    lease.send({});
    lease.send({ re_enqueue: true });
    assert.equal((await lease.responses.next()).closed_cleanly, true);
    assert.equal(await lease.responses.closed(), undefined);
    assert.deepEqual(lease.responses.pending(), []);
    assert.equal(stageOf(await doneOp(ops)), 'COMPLETED');
    await exec.reservations.expectNothing(100);
    assert.equal(t.server.queueLength(), 0);
  });

  test('a lease finalized without a published result fails the execution instead of leaving its client waiting', async () => {
    const exec = await connectExecutor();
    const { actionDigest } = await client.uploadAction({ args: ['unpublished', randomUUID()] });
    const ops = client.execute(actionDigest);
    const lease = exec.lease(await exec.nextReservation());
    await lease.responses.next();
    assert.equal(await lease.finalize(), true);
    const done = await doneOp(ops);
    assert.equal(responseOf(done)?.status?.code, Code.INTERNAL);
    assert.match(responseOf(done)?.status?.message ?? '', /without publishing a result/);
    assert.equal(t.server.queueLength(), 0);
  });

  test('200 Execute streams cancelled at once leave no task behind, and the server still executes', async () => {
    const exec = await connectExecutor();
    const { actionDigest } = await client.uploadAction({ args: ['storm', randomUUID()] });
    const execution = client.execution;
    const names: string[] = [];
    const firstOps: Promise<void>[] = [];
    for (let i = 0; i < 200; i++) {
      const call = execution.Execute({ action_digest: actionDigest, skip_cache_lookup: true });
      call.on('error', () => {});
      if (i % 2 === 0) {
        call.cancel();
        continue;
      }
      firstOps.push(
        new Promise((resolve) =>
          call.once('data', (op: Operation__Output) => {
            names.push(op.name);
            call.cancel();
            resolve();
          }),
        ),
      );
    }
    await Promise.all(firstOps);
    assert.equal(names.length, 100);
    for (let i = 0; i < 300 && t.server.queueLength() > 0; i++) await sleep(10);
    await sleep(150);
    assert.equal(t.server.queueLength(), 0);
    const waited = await doneOp(client.waitExecution(names[0]));
    assert.equal(responseOf(waited)?.status?.code, Code.CANCELLED);

    // A normal execution still runs to completion.
    const ops = client.execute(actionDigest);
    const name = (await ops.next()).name;
    for (;;) {
      const msg = await exec.reservations.next();
      if (msg.enqueue_task_reservation_request?.task_id === name) break;
    }
    const lease = exec.lease(name);
    await lease.responses.next();
    await exec.publish([completedOp(name, actionDigest, { exit_code: 0 })]);
    await lease.finalize();
    assert.equal(stageOf((await untilDone(ops)).at(-1)!), 'COMPLETED');
  });
});

// ---------------------------------------------------------------- a real executor

describe('hostile Commands and input roots reaching a real executor', () => {
  const sentinel = `idlebuild-hostile-${randomUUID()}`;
  let t: Target;
  let dir: string;
  let reapi: ReapiClient;
  let executor: Executor;
  before(async () => {
    t = await startTarget();
    dir = await mkdtemp(join(tmpdir(), 'idlebuild-hostile-executor-'));
    reapi = new ReapiClient(t.server.address);
    executor = await startExecutor({
      config: testConfig(dir, t.server.address),
      identity: testIdentity('hostile'),
    });
    for (let i = 0; i < 500 && !executor.snapshot().connected; i++) await sleep(10);
  });
  after(async () => {
    await executor.stop({ graceMs: 0 });
    reapi.close();
    await t.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** Every path under `root` whose name contains the sentinel. */
  async function sentinelsUnder(root: string): Promise<string[]> {
    const entries = await readdir(root, { recursive: true });
    return entries.filter((e) => e.includes(sentinel));
  }

  test('working directories and output paths that leave the workspace are INVALID_ARGUMENT and write nothing', async () => {
    const script = `echo pwned > ${sentinel}`;
    const specs = [
      { workingDirectory: '../..', outputPaths: [sentinel] },
      { workingDirectory: '/tmp', outputPaths: [sentinel] },
      { outputPaths: [`../../${sentinel}`] },
      { outputPaths: [`/tmp/${sentinel}`] },
      { outputPaths: [`out/../../${sentinel}`] },
    ];
    for (const spec of specs) {
      const action = await reapi.uploadAction({ args: ['sh', '-c', script], ...spec });
      const { response } = await reapi.execute(action);
      assert.equal(response.status?.code, Code.INVALID_ARGUMENT, JSON.stringify(spec));
      assert.match(response.status?.message ?? '', /Invalid (working directory|output path)/);
    }
    assert.deepEqual(await sentinelsUnder(dir), []);
    assert.equal(existsSync(join(tmpdir(), sentinel)), false);
  });

  test('an input root writing a file through a symlinked directory name is INVALID_ARGUMENT', async () => {
    const evil = Buffer.from('pwned');
    const under = encode('build.bazel.remote.execution.v2.Directory', {
      files: [{ name: sentinel, digest: digestOf(evil) }],
    });
    const roots: Directory[] = [
      // The same name as a directory and as a symlink to /tmp.
      {
        directories: [{ name: 'link', digest: digestOf(under) }],
        symlinks: [{ name: 'link', target: '/tmp' }],
      },
      // A relative symlink that climbs out, and a directory of that name.
      {
        directories: [{ name: 'link', digest: digestOf(under) }],
        symlinks: [{ name: 'link', target: '../../../../../../../../tmp' }],
      },
      // A file whose name walks through the symlink.
      {
        files: [{ name: `link/${sentinel}`, digest: digestOf(evil) }],
        symlinks: [{ name: 'link', target: '/tmp' }],
      },
    ];
    for (const root of roots) {
      const rootBytes = encode('build.bazel.remote.execution.v2.Directory', root);
      const command = encode('build.bazel.remote.execution.v2.Command', { arguments: ['true'] });
      const action = encode('build.bazel.remote.execution.v2.Action', {
        command_digest: digestOf(command),
        input_root_digest: digestOf(rootBytes),
      });
      await reapi.upload([evil, under, rootBytes, command, action]);
      const { response } = await reapi.execute(digestOf(action));
      assert.equal(response.status?.code, Code.INVALID_ARGUMENT, response.status?.message);
      assert.match(response.status?.message ?? '', /Invalid input root/);
    }
    assert.equal(existsSync(join(tmpdir(), sentinel)), false);
    assert.equal(existsSync(join('/tmp', sentinel)), false);
    assert.deepEqual(await sentinelsUnder(dir), []);
    await assertContained(t);
  });
});
