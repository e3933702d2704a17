import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, beforeEach, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { Code, GrpcError } from '../../../src-main/core/errors.js';
import { leaseTask, type LeaseOptions } from '../../../src-main/core/executor/lease.js';
import { encode, type LeaseTaskRequest__Output } from '../../../src-main/core/proto/index.js';
import { startFakeScheduler, type FakeScheduler, type LeaseCall } from './fake-scheduler.js';

const TASK = encode('build.bazel.remote.execution.v2.ExecutionTask', {
  execution_id: '/uploads/u1/blobs/abc/1',
  jwt: 'task-jwt',
  invocation_id: 'inv-1',
});

interface LeaseLog {
  streams: { metadata: grpc.Metadata; requests: LeaseTaskRequest__Output[] }[];
}

/**
 * A LeaseTask script: `respond` gets each request and its stream (0-based)
 * and answers by writing to / ending / failing the call.
 */
function scriptLease(
  fake: FakeScheduler,
  respond: (req: LeaseTaskRequest__Output, call: LeaseCall, stream: number, n: number) => void,
): LeaseLog {
  const log: LeaseLog = { streams: [] };
  fake.onLease = (call) => {
    const index = log.streams.length;
    const entry = { metadata: call.metadata, requests: [] as LeaseTaskRequest__Output[] };
    log.streams.push(entry);
    call.on('data', (req: LeaseTaskRequest__Output) => {
      entry.requests.push(req);
      respond(req, call, index, entry.requests.length - 1);
    });
    call.on('end', () => call.end());
    call.on('error', () => undefined);
  };
  return log;
}

/** The usual scheduler: claim, answer keep-alives, close cleanly. */
function standardAnswer(req: LeaseTaskRequest__Output, call: LeaseCall, _s: number, n: number) {
  if (req.finalize || req.re_enqueue) call.write({ closed_cleanly: true });
  else if (n === 0)
    call.write({
      serialized_task: TASK,
      lease_duration_seconds: 1,
      lease_id: 'lease-1',
      reconnect_token: 'lease-1',
      supports_reconnect: true,
    });
  else call.write({ lease_duration_seconds: 1 });
}

describe('task lease', () => {
  let fake: FakeScheduler;
  let options: LeaseOptions;

  before(async () => {
    fake = await startFakeScheduler();
  });
  beforeEach(() => {
    fake.reEnqueues.length = 0;
    options = {
      client: fake.client(),
      taskId: 'task-1',
      jwt: 'reservation-jwt',
      executorId: 'exec-1',
      executorHostname: 'worker-7',
    };
  });
  after(() => fake.close());

  test('claims with the reservation JWT and decodes the ExecutionTask', async () => {
    const log = scriptLease(fake, standardAnswer);
    const lease = await leaseTask(options);
    assert.ok(lease);
    assert.equal(lease.task.execution_id, '/uploads/u1/blobs/abc/1');
    assert.equal(lease.task.jwt, 'task-jwt');
    assert.equal(lease.leaseId, 'lease-1');
    const [first] = log.streams[0].requests;
    assert.equal(first.task_id, 'task-1');
    assert.equal(first.executor_id, 'exec-1');
    assert.equal(first.executor_hostname, 'worker-7');
    assert.equal(first.supports_reconnect, true);
    assert.deepEqual(log.streams[0].metadata.get('x-buildbuddy-jwt'), ['reservation-jwt']);
    assert.deepEqual(log.streams[0].metadata.get('x-buildbuddy-api-key'), []);
    await lease.close();
  });

  test('sends no JWT header when the reservation has none', async () => {
    const log = scriptLease(fake, standardAnswer);
    const lease = await leaseTask({ ...options, jwt: '' });
    assert.deepEqual(log.streams[0].metadata.get('x-buildbuddy-jwt'), []);
    await lease!.close();
  });

  test('a task claimed by someone else (NOT_FOUND) is dropped quietly', async () => {
    scriptLease(fake, (_req, call) =>
      call.emit('error', { code: grpc.status.NOT_FOUND, details: 'task already claimed' }),
    );
    assert.equal(await leaseTask(options), undefined);
  });

  test('another claim failure is an error naming the task', async () => {
    scriptLease(fake, (_req, call) =>
      call.emit('error', { code: grpc.status.PERMISSION_DENIED, details: 'bad jwt' }),
    );
    await assert.rejects(leaseTask(options), (err: GrpcError) => {
      assert.equal(err.code, Code.PERMISSION_DENIED);
      assert.match(err.message, /Failed to lease task "task-1"/);
      return true;
    });
  });

  test('keep-alives go out on the same stream with the reconnect token', async () => {
    const log = scriptLease(fake, standardAnswer);
    const lease = await leaseTask(options);
    await sleep(1_800);
    const requests = log.streams[0].requests;
    assert.equal(log.streams.length, 1);
    assert.equal(requests.length, 3, 'the claim and two keep-alives in 1.8 s at a 1 s lease');
    for (const keepAlive of requests.slice(1)) {
      assert.equal(keepAlive.task_id, 'task-1');
      assert.equal(keepAlive.reconnect_token, 'lease-1');
      assert.equal(keepAlive.finalize, false);
    }
    assert.equal(lease!.signal.aborted, false);
    await lease!.close();
  });

  test('a keep-alive answered NOT_FOUND (task cancelled) aborts it without re-enqueuing', async () => {
    scriptLease(fake, (req, call, _s, n) => {
      if (n === 0) standardAnswer(req, call, 0, 0);
      else call.emit('error', { code: grpc.status.NOT_FOUND, details: 'task disappeared' });
    });
    const lease = await leaseTask(options);
    const aborted = new Promise((resolve) => lease!.signal.addEventListener('abort', resolve));
    await aborted;
    assert.equal((lease!.signal.reason as GrpcError).code, Code.CANCELLED);
    assert.equal(lease!.cancelled, true);
    await lease!.close();
    assert.equal(fake.reEnqueues.length, 0, 'a task the scheduler withdrew is not handed back');
  });

  test('a keep-alive failing with UNAVAILABLE reconnects with the reconnect token', async () => {
    const log = scriptLease(fake, (req, call, stream, n) => {
      if (stream === 0 && n === 1)
        call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'server is shutting down' });
      else if (stream === 1 && n === 0)
        call.write({ lease_duration_seconds: 1, lease_id: 'lease-1' });
      else standardAnswer(req, call, stream, n);
    });
    const lease = await leaseTask(options);
    await sleep(1_000);
    assert.equal(log.streams.length, 2);
    assert.equal(log.streams[1].requests[0].reconnect_token, 'lease-1');
    assert.deepEqual(log.streams[1].metadata.get('x-buildbuddy-jwt'), ['reservation-jwt']);
    assert.equal(lease!.signal.aborted, false);
    await lease!.close();
    assert.equal(log.streams[1].requests.at(-1)!.finalize, true, 'closed on the new stream');
    assert.equal(fake.reEnqueues.length, 0);
  });

  test('finalize closes cleanly on the lease stream', async () => {
    const log = scriptLease(fake, standardAnswer);
    const lease = await leaseTask(options);
    await lease!.close();
    const last = log.streams[0].requests.at(-1)!;
    assert.equal(last.finalize, true);
    assert.equal(last.re_enqueue, false);
    assert.equal(fake.reEnqueues.length, 0);
  });

  test('re-enqueue carries the reason as a google.rpc.Status', async () => {
    const log = scriptLease(fake, standardAnswer);
    const lease = await leaseTask(options);
    await lease!.close(new GrpcError(Code.UNAVAILABLE, 'Executor is shutting down'));
    const last = log.streams[0].requests.at(-1)!;
    assert.equal(last.re_enqueue, true);
    assert.equal(last.re_enqueue_reason?.code, Code.UNAVAILABLE);
    assert.equal(last.re_enqueue_reason?.message, 'Executor is shutting down');
  });

  test('a close that is not confirmed clean falls back to ReEnqueueTask with only the JWT', async () => {
    scriptLease(fake, (req, call, s, n) => {
      if (req.finalize || req.re_enqueue) call.write({ closed_cleanly: false });
      else standardAnswer(req, call, s, n);
    });
    const lease = await leaseTask({ ...options });
    await lease!.close(new GrpcError(Code.INTERNAL, 'runner crashed'));
    assert.equal(fake.reEnqueues.length, 1);
    const { request, metadata } = fake.reEnqueues[0];
    assert.deepEqual(
      { task_id: request.task_id, lease_id: request.lease_id, reason: request.reason },
      { task_id: 'task-1', lease_id: 'lease-1', reason: 'runner crashed' },
    );
    assert.deepEqual(metadata.get('x-buildbuddy-jwt'), ['reservation-jwt']);
    assert.deepEqual(metadata.get('x-buildbuddy-api-key'), []);
  });

  test('a task that does not decode is finalized and reported as INTERNAL', async () => {
    const log = scriptLease(fake, (req, call, s, n) => {
      if (n === 0) call.write({ serialized_task: Buffer.from([0xff, 0xff, 0xff]), lease_id: 'l' });
      else standardAnswer(req, call, s, n);
    });
    await assert.rejects(leaseTask(options), (err: GrpcError) => err.code === Code.INTERNAL);
    assert.equal(log.streams[0].requests.at(-1)!.finalize, true);
  });
});
