import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, beforeEach, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { Code, GrpcError } from '../../../src-main/core/errors.js';
import {
  REQUEST_METADATA_HEADER,
  taskCallMetadata,
} from '../../../src-main/core/executor/call-metadata.js';
import { openPublisher, type PublisherOptions } from '../../../src-main/core/executor/publisher.js';
import {
  decode,
  grpcPackage,
  unpackAny,
  type ExecutionClient,
  type ExecutionTask__Output,
  type Operation__Output,
} from '../../../src-main/core/proto/index.js';

const EXECUTION_ID = '/uploads/0b6c2a3e-0000-4000-8000-000000000000/blobs/abc/12';
const ACTION_DIGEST = { hash: 'a'.repeat(64), size_bytes: 12 };

interface PublishStream {
  metadata: grpc.Metadata;
  operations: Operation__Output[];
}

/** A scripted Execution service: `onOperation` decides how each stream reacts. */
async function startFakeExecution() {
  const server = new grpc.Server();
  const fake = {
    address: '',
    streams: [] as PublishStream[],
    /** Return an error to fail the stream after this Operation. */
    onOperation: (_op: Operation__Output, _stream: number): grpc.ServiceError | undefined =>
      undefined,
    close: () => server.forceShutdown(),
  };
  server.addService(grpcPackage().build.bazel.remote.execution.v2.Execution.service, {
    PublishOperation: (
      call: grpc.ServerReadableStream<Operation__Output, object>,
      callback: grpc.sendUnaryData<object>,
    ) => {
      const index = fake.streams.length;
      const stream: PublishStream = { metadata: call.metadata, operations: [] };
      fake.streams.push(stream);
      let failed = false;
      call.on('data', (op: Operation__Output) => {
        if (failed) return;
        stream.operations.push(op);
        const err = fake.onOperation(op, index);
        if (err) {
          failed = true;
          callback(err);
        }
      });
      call.on('end', () => !failed && callback(null, {}));
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  fake.address = `127.0.0.1:${port}`;
  return fake;
}

const unavailable = (): grpc.ServiceError =>
  Object.assign(new Error('going away'), {
    code: grpc.status.UNAVAILABLE,
    details: 'going away',
    metadata: new grpc.Metadata(),
  });

function stageOf(op: Operation__Output) {
  return unpackAny('build.bazel.remote.execution.v2.ExecuteOperationMetadata', op.metadata);
}

describe('operation publisher', () => {
  let fake: Awaited<ReturnType<typeof startFakeExecution>>;
  let client: ExecutionClient;
  let options: PublisherOptions;

  before(async () => {
    fake = await startFakeExecution();
    const { Execution } = grpcPackage().build.bazel.remote.execution.v2;
    client = new Execution(fake.address, grpc.credentials.createInsecure()) as ExecutionClient;
  });
  beforeEach(() => {
    fake.streams.length = 0;
    fake.onOperation = () => undefined;
    const task = { jwt: 'task-jwt', invocation_id: 'inv-9' } as ExecutionTask__Output;
    options = {
      client,
      executionId: EXECUTION_ID,
      actionDigest: ACTION_DIGEST,
      metadata: taskCallMetadata({ task, reservationJwt: 'reservation-jwt', hostId: 'host-1' }),
      reconnectBudgetMs: 500,
    };
  });
  after(() => {
    client.close();
    fake.close();
  });

  test('progress and the result go out as Operations named by the execution ID', async () => {
    const publisher = openPublisher(options);
    await publisher.publish('CACHE_CHECK');
    await publisher.publish('EXECUTING', 'EXECUTING_COMMAND');
    await publisher.complete({ result: { exit_code: 2 }, status: { code: 0 } });
    await publisher.close();

    const [stream] = fake.streams;
    assert.equal(fake.streams.length, 1);
    assert.deepEqual(
      stream.operations.map((op) => [op.name, stageOf(op)?.stage, op.done]),
      [
        [EXECUTION_ID, 'CACHE_CHECK', false],
        [EXECUTION_ID, 'EXECUTING', false],
        [EXECUTION_ID, 'COMPLETED', true],
      ],
    );
    const executing = stageOf(stream.operations[1])!;
    assert.equal(executing.action_digest?.hash, ACTION_DIGEST.hash);
    const progress = unpackAny(
      'build.bazel.remote.execution.v2.ExecutionProgress',
      executing.partial_execution_metadata!.auxiliary_metadata[0],
    );
    assert.equal(progress?.execution_state, 'EXECUTING_COMMAND');
    const response = unpackAny(
      'build.bazel.remote.execution.v2.ExecuteResponse',
      stream.operations[2].response,
    );
    assert.equal(response?.result?.exit_code, 2);
  });

  test('task calls carry the task JWT and RequestMetadata naming this host', async () => {
    const publisher = openPublisher(options);
    await publisher.publish('CACHE_CHECK');
    await publisher.close();
    const { metadata } = fake.streams[0];
    assert.deepEqual(metadata.get('x-buildbuddy-jwt'), ['task-jwt']);
    assert.deepEqual(metadata.get('x-buildbuddy-client'), ['executor']);
    assert.deepEqual(metadata.get('x-buildbuddy-origin'), ['']);
    assert.deepEqual(metadata.get('x-buildbuddy-api-key'), []);
    const requestMetadata = decode(
      'build.bazel.remote.execution.v2.RequestMetadata',
      metadata.get(REQUEST_METADATA_HEADER)[0] as Buffer,
    );
    assert.equal(requestMetadata.tool_invocation_id, 'inv-9');
    assert.equal(requestMetadata.executor_details?.executor_host_id, 'host-1');
  });

  test('a broken stream is re-opened and the last Operation re-sent', async () => {
    fake.onOperation = (op, stream) =>
      stream === 0 && stageOf(op)?.stage === 'EXECUTING' ? unavailable() : undefined;
    const publisher = openPublisher(options);
    await publisher.publish('CACHE_CHECK');
    await publisher.publish('EXECUTING', 'DOWNLOADING_INPUTS');
    await sleep(50);
    await publisher.complete({ status: { code: 0 } });
    await publisher.close();
    assert.equal(fake.streams.length, 2);
    assert.deepEqual(
      fake.streams[1].operations.map((op) => stageOf(op)?.stage),
      ['COMPLETED'],
      'the new stream got the Operation that could not be sent',
    );
  });

  test('the result is re-sent on a new stream when closing fails', async () => {
    let failedOnce = false;
    fake.onOperation = (op) => {
      if (!op.done || failedOnce) return undefined;
      failedOnce = true;
      return unavailable();
    };
    const publisher = openPublisher(options);
    await publisher.complete({ status: { code: 0 } });
    await publisher.close();
    assert.equal(fake.streams.length, 2);
    assert.equal(fake.streams[1].operations[0].done, true);
  });

  test('progress is re-published while the task executes', async () => {
    const publisher = openPublisher({ ...options, republishIntervalMs: 40 });
    await publisher.publish('EXECUTING', 'EXECUTING_COMMAND');
    await sleep(150);
    await publisher.complete({ status: { code: 0 } });
    await publisher.close();
    const executing = fake.streams[0].operations.filter((op) => !op.done);
    assert.ok(executing.length >= 3, `${executing.length} progress Operations`);
    const count = fake.streams[0].operations.length;
    await sleep(100);
    assert.equal(fake.streams[0].operations.length, count, 'no re-publish after completion');
  });

  test('a scheduler that stays unreachable makes close fail with UNAVAILABLE', async () => {
    fake.onOperation = () => unavailable();
    const publisher = openPublisher(options);
    const started = Date.now();
    await assert.rejects(
      (async () => {
        await publisher.complete({ status: { code: 0 } });
        await publisher.close();
      })(),
      (err: GrpcError) => err.code === Code.UNAVAILABLE,
    );
    assert.ok(Date.now() - started < 2_000, 'gives up after the retry budget');
  });
});
