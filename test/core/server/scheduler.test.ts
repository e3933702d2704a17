import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { digestOf } from '../../../src-main/core/digest.js';
import { encode } from '../../../src-main/core/proto/index.js';
import {
  completedOp,
  responseOf,
  sleep,
  stageOf,
  startTestServer,
  taskOf,
  TestClient,
  TestExecutor,
  untilDone,
  type TestServer,
} from './scheduler-harness.js';

const RESULT = { exit_code: 0 };

/** Executors created by a test, closed after it. */
let executors: TestExecutor[] = [];

async function executorsOn(ts: TestServer, n: number, node = {}): Promise<TestExecutor[]> {
  const created = Array.from({ length: n }, () => new TestExecutor(ts.address, node));
  executors.push(...created);
  await Promise.all(created.map((e) => e.ready()));
  return created;
}

/** How many of `list` receive a reservation within `ms`, and which task IDs. */
async function reservationsWithin(list: TestExecutor[], ms: number) {
  const got = await Promise.allSettled(list.map((e) => e.nextReservation(ms)));
  return got.flatMap((r, i) =>
    r.status === 'fulfilled' ? [{ executor: list[i], taskId: r.value }] : [],
  );
}

function unary<Req, Res>(
  fn: (req: Req, cb: (err: grpc.ServiceError | null, res?: Res) => void) => unknown,
  req: Req,
): Promise<{ err: grpc.ServiceError | null; res?: Res }> {
  return new Promise((resolve) => fn(req, (err, res) => resolve({ err, res })));
}

// Each test gets its own server, so no task left waiting by one test is
// offered to the next test's executors.
describe('Scheduler service', () => {
  let ts: TestServer;
  let client: TestClient;

  beforeEach(async () => {
    ts = await startTestServer();
    client = new TestClient(ts.address);
  });
  afterEach(async () => {
    for (const e of executors) e.close();
    executors = [];
    client.close();
    await ts.stop();
  });

  test('a task is reserved on 3 of 4 executors and the first lease wins', async () => {
    const four = await executorsOn(ts, 4);
    const { actionDigest } = await client.uploadAction({ args: ['probe'] });
    const ops = client.execute(actionDigest);
    const queued = await ops.next();

    const got = await reservationsWithin(four, 200);
    assert.equal(got.length, 3);
    assert.ok(got.every((g) => g.taskId === queued.name));

    const [winner, loser] = got;
    const lease = winner.executor.lease(winner.taskId);
    const first = await lease.responses.next();
    assert.equal(taskOf(first).execution_id, queued.name);
    assert.equal(first.lease_duration_seconds >= 1, true);
    assert.equal(first.supports_reconnect, true);

    const second = loser.executor.lease(loser.taskId);
    const err = await second.responses.closed();
    assert.equal(err?.code, grpc.status.NOT_FOUND);
    assert.match(err!.details, /already claimed/);

    assert.equal(
      await winner.executor.publish([completedOp(queued.name, actionDigest, RESULT)]),
      undefined,
    );
    assert.equal(await lease.finalize(), true);
    assert.equal(stageOf((await untilDone(ops)).at(-1)!), 'COMPLETED');
  });

  test('a reservation carries the task size and scheduling metadata from the platform', async () => {
    const [executor] = await executorsOn(ts, 1);
    const { actionDigest } = await client.uploadAction({
      args: ['sized'],
      platform: { EstimatedCPU: '2', EstimatedMemory: '1GB', OSFamily: 'Linux', Pool: 'default' },
    });
    client.execute(actionDigest);
    const req = await executor.nextReservationRequest();
    assert.equal(req.task_size?.estimated_milli_cpu, 2000);
    assert.equal(req.task_size?.estimated_memory_bytes, 1e9);
    assert.equal(req.scheduling_metadata?.os, 'linux');
    assert.equal(req.scheduling_metadata?.arch, 'amd64');
    assert.equal(req.scheduling_metadata?.pool, '');
    assert.equal(req.scheduling_metadata?.task_group_id, 'ANON');
    assert.equal(req.delay?.seconds ?? 0, 0);
    const lease = executor.lease(req.task_id);
    await lease.responses.next();
    await executor.publish([completedOp(req.task_id, actionDigest, RESULT)]);
    await lease.finalize();
  });

  test('an action no registered executor can run fails at once, saying why', async () => {
    const mismatched = [
      ...(await executorsOn(ts, 1, { pool: '' })),
      ...(await executorsOn(ts, 1, { pool: 'gpu', os_family: 'darwin' })),
      ...(await executorsOn(ts, 1, { pool: 'gpu', arch: 'arm64' })),
    ];
    const { actionDigest } = await client.uploadAction({
      args: ['gpu'],
      platform: { Pool: 'GPU' },
    });
    const err = await client.execute(actionDigest).closed();
    assert.equal(err?.code, grpc.status.UNAVAILABLE);
    assert.match(
      err!.details,
      /No registered executors in pool "gpu" with os "linux" and arch "amd64"/,
    );

    // An executor in the pool that is too small for the task: RESOURCE_EXHAUSTED.
    mismatched.push(...(await executorsOn(ts, 1, { pool: 'gpu', assignable_memory_bytes: 1e6 })));
    const tooBig = await client.execute(actionDigest).closed();
    assert.equal(tooBig?.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.match(tooBig!.details, /can fit a task needing 600 milli-CPU and 400000000 bytes/);
    assert.equal((await reservationsWithin(mismatched, 150)).length, 0);
    assert.equal(ts.server.queueLength(), 0);
  });

  test('a task whose executor went away waits and goes to one that registers later', async () => {
    const [first] = await executorsOn(ts, 1, { pool: 'gpu' });
    const { actionDigest } = await client.uploadAction({
      args: ['gpu2'],
      platform: { Pool: 'GPU' },
    });
    const ops = client.execute(actionDigest);
    const queued = await ops.next();
    assert.equal(await first.nextReservation(), queued.name);
    first.close();
    await waitFor(() => ts.server.queueLength() === 1);

    // A matching executor that registers later is offered the waiting task.
    const gpu = new TestExecutor(ts.address, { pool: 'gpu' });
    executors.push(gpu);
    assert.equal(await gpu.nextReservation(), queued.name);
    // A heartbeat does not repeat a reservation the executor holds.
    gpu.register();
    await gpu.reservations.expectNothing(100);

    const lease = gpu.lease(queued.name);
    await lease.responses.next();
    assert.equal(ts.server.queueLength(), 0);
    await gpu.publish([completedOp(queued.name, actionDigest, RESULT)]);
    await lease.finalize();
  });

  test('a lease without keep-alives expires and another executor completes the task', async () => {
    const [a, b] = await executorsOn(ts, 2);
    const { actionDigest } = await client.uploadAction({ args: ['expire'] });
    const ops = client.execute(actionDigest);
    const taskId = await a.nextReservation();
    await b.nextReservation();

    // A claims the task, then goes silent.
    const stale = a.lease(taskId);
    await stale.responses.next();
    const lost = await stale.responses.closed(2000);
    assert.equal(lost?.code, grpc.status.NOT_FOUND);

    // The task is reserved again, delayed for A's reconnect; B takes it.
    const again = await b.nextReservationRequest();
    assert.equal(again.task_id, taskId);
    await sleep((again.delay?.nanos ?? 0) / 1e6 + (again.delay?.seconds ?? 0) * 1000 + 20);
    const lease = b.lease(taskId);
    await lease.responses.next();
    await b.publish([completedOp(taskId, actionDigest, RESULT)]);
    assert.equal(await lease.finalize(), true);
    const done = (await untilDone(ops)).at(-1)!;
    assert.equal(responseOf(done)?.result?.exit_code, 0);
  });

  test('keep-alives hold a lease beyond lease + grace', async () => {
    const [executor] = await executorsOn(ts, 1);
    const { actionDigest } = await client.uploadAction({ args: ['kept'] });
    client.execute(actionDigest);
    const taskId = await executor.nextReservation();
    const lease = executor.lease(taskId);
    const first = await lease.responses.next();
    for (let i = 0; i < 6; i++) {
      await sleep(100);
      lease.send({ reconnect_token: first.reconnect_token });
      const res = await lease.responses.next();
      assert.equal(res.lease_duration_seconds, first.lease_duration_seconds);
    }
    await executor.publish([completedOp(taskId, actionDigest, RESULT)]);
    assert.equal(await lease.finalize(), true);
  });

  test('a task re-enqueued 5 times fails with INTERNAL "already attempted 5 times"', async () => {
    const [executor] = await executorsOn(ts, 1);
    const { actionDigest } = await client.uploadAction({ args: ['flaky'] });
    const ops = client.execute(actionDigest);
    for (let attempt = 1; attempt <= 5; attempt++) {
      const taskId = await executor.nextReservation();
      const lease = executor.lease(taskId);
      await lease.responses.next();
      assert.equal(await lease.reEnqueue(`runner crashed ${attempt}`), true);
    }
    const done = (await untilDone(ops)).at(-1)!;
    const status = responseOf(done)?.status;
    assert.equal(status?.code, grpc.status.INTERNAL);
    assert.match(status!.message, /already attempted 5 times\. Last failure: .*runner crashed 5/);
    await executor.reservations.expectNothing(100);
  });

  test('a broken lease can be re-claimed with its reconnect token', async () => {
    const slow = await startTestServer({ reconnectGraceMs: 2000 });
    try {
      const c = new TestClient(slow.address);
      const a = new TestExecutor(slow.address);
      const b = new TestExecutor(slow.address);
      executors.push(a, b);
      await Promise.all([a.ready(), b.ready()]);
      const { actionDigest } = await c.uploadAction({ args: ['reconnect'] });
      const ops = c.execute(actionDigest);
      const taskId = await a.nextReservation();
      await b.nextReservation();

      const broken = a.lease(taskId);
      const first = await broken.responses.next();
      broken.call.cancel();
      await sleep(50);

      const other = b.lease(taskId);
      const refused = await other.responses.closed();
      assert.equal(refused?.code, grpc.status.NOT_FOUND);
      assert.match(refused!.details, /waiting for another executor to reconnect/);

      const resumed = a.lease(taskId, { reconnect_token: first.reconnect_token });
      const again = await resumed.responses.next();
      assert.equal(again.lease_id, first.lease_id);
      await a.publish([completedOp(taskId, actionDigest, RESULT)]);
      assert.equal(await resumed.finalize(), true);
      assert.equal(stageOf((await untilDone(ops)).at(-1)!), 'COMPLETED');
      c.close();
    } finally {
      await slow.stop();
    }
  });

  test('a shutting-down executor hands its queued reservation to another', async () => {
    const four = await executorsOn(ts, 4);
    const { actionDigest } = await client.uploadAction({ args: ['shutdown'] });
    client.execute(actionDigest);
    const got = await reservationsWithin(four, 200);
    assert.equal(got.length, 3);
    const spare = four.find((e) => !got.some((g) => g.executor === e))!;

    got[0].executor.work.write({ shutting_down_request: { task_id: [got[0].taskId] } });
    const taskId = await spare.nextReservation();
    assert.equal(taskId, got[0].taskId);
    const lease = spare.lease(taskId);
    await lease.responses.next();
    await spare.publish([completedOp(taskId, actionDigest, RESULT)]);
    await lease.finalize();
  });

  test('ask_for_more_work gets tasks the executor does not hold, else a back-off delay', async () => {
    const four = await executorsOn(ts, 4);
    const delay = await four[0].ready();
    assert.ok(delay >= 5000 && delay <= 60_000, `delay ${delay}`);

    const { actionDigest } = await client.uploadAction({ args: ['more work'] });
    client.execute(actionDigest);
    const got = await reservationsWithin(four, 200);
    const spare = four.find((e) => !got.some((g) => g.executor === e))!;
    spare.work.write({ ask_for_more_work_request: {} });
    const taskId = await spare.nextReservation();
    assert.equal(taskId, got[0].taskId);
    const lease = spare.lease(taskId);
    await lease.responses.next();
    await spare.publish([completedOp(taskId, actionDigest, RESULT)]);
    await lease.finalize();
  });

  test('the first message must register an executor with a host', async () => {
    const e1 = new TestExecutor(ts.address, { host: '' });
    const e2 = new TestExecutor(ts.address);
    executors.push(e1, e2);
    assert.equal((await e1.reservations.closed())?.code, grpc.status.INVALID_ARGUMENT);

    const raw = e2.scheduler.RegisterAndStreamWork();
    raw.write({ ask_for_more_work_request: {} });
    const err = await new Promise<grpc.ServiceError>((resolve) => raw.on('error', resolve));
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  });

  test('LeaseTask messages must all name the same task', async () => {
    const [executor] = await executorsOn(ts, 1);
    const { actionDigest } = await client.uploadAction({ args: ['mismatch'] });
    const ops = client.execute(actionDigest);
    const taskId = await executor.nextReservation();
    const lease = executor.lease(taskId);
    await lease.responses.next();
    lease.call.write({ task_id: 'another-task' });
    assert.equal((await lease.responses.closed())?.code, grpc.status.INVALID_ARGUMENT);

    // The lease was released; the task comes back and can still complete.
    const again = await executor.nextReservationRequest();
    await sleep((again.delay?.nanos ?? 0) / 1e6 + 20);
    const retry = executor.lease(taskId);
    await retry.responses.next();
    await executor.publish([completedOp(taskId, actionDigest, RESULT)]);
    await retry.finalize();
    assert.equal(stageOf((await untilDone(ops)).at(-1)!), 'COMPLETED');
  });

  test('TaskExists and ReEnqueueTask follow the lease', async () => {
    const [executor] = await executorsOn(ts, 1);
    const sched = executor.scheduler;
    const { actionDigest } = await client.uploadAction({ args: ['exists'] });
    client.execute(actionDigest);
    const taskId = await executor.nextReservation();
    const exists = await unary(sched.TaskExists.bind(sched), { task_id: taskId });
    assert.equal(exists.res?.exists, true);
    const unknown = await unary(sched.TaskExists.bind(sched), { task_id: 'nope' });
    assert.equal(unknown.res?.exists, false);

    const lease = executor.lease(taskId);
    const first = await lease.responses.next();
    const wrong = { task_id: taskId, lease_id: 'not-the-lease', reason: 'x' };
    await unary(sched.ReEnqueueTask.bind(sched), wrong);
    await executor.reservations.expectNothing(100);

    const right = { task_id: taskId, lease_id: first.lease_id, reason: 'upload failed' };
    assert.equal((await unary(sched.ReEnqueueTask.bind(sched), right)).err, null);
    assert.equal(await executor.nextReservation(), taskId);
    lease.call.cancel();
  });

  test('ScheduleTask validates its request and schedules a valid task', async () => {
    const [executor] = await executorsOn(ts, 1);
    const sched = executor.scheduler;
    const empty = await unary(sched.ScheduleTask.bind(sched), { task_id: 'x' });
    assert.equal(empty.err?.code, grpc.status.FAILED_PRECONDITION);

    const actionDigest = digestOf(Buffer.from('scheduled action'));
    const uuid = '1b4e28ba-2fa1-11d2-883f-0016d3cca427';
    const taskId = `/uploads/${uuid}/blobs/${actionDigest.hash}/${actionDigest.size_bytes}`;
    const serialized_task = encode('build.bazel.remote.execution.v2.ExecutionTask', {
      execute_request: { action_digest: actionDigest },
      execution_id: taskId,
    });
    const metadata = { os: 'linux', arch: 'amd64', task_size: { estimated_milli_cpu: 300 } };
    const ok = await unary(sched.ScheduleTask.bind(sched), {
      task_id: taskId,
      metadata,
      serialized_task,
    });
    assert.equal(ok.err, null);
    assert.equal(await executor.nextReservation(), taskId);

    const waiter = client.waitExecution(taskId);
    assert.equal(stageOf(await waiter.next()), 'QUEUED');
    const lease = executor.lease(taskId);
    await lease.responses.next();
    await executor.publish([completedOp(taskId, actionDigest, RESULT)]);
    await lease.finalize();
    assert.equal(stageOf((await untilDone(waiter)).at(-1)!), 'COMPLETED');

    const forwarded = await unary(sched.EnqueueTaskReservation.bind(sched), { task_id: taskId });
    assert.equal(forwarded.err?.code, grpc.status.UNIMPLEMENTED);
  });
});

describe('Scheduler service with an executor API key', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startTestServer({ executorApiKey: 'the-right-key' });
  });
  after(async () => {
    for (const e of executors) e.close();
    executors = [];
    await ts.stop();
  });

  test('an executor with a wrong or missing API key is UNAUTHENTICATED', async () => {
    const wrong = new TestExecutor(ts.address, {}, 'a-wrong-key');
    const missing = new TestExecutor(ts.address);
    executors.push(wrong, missing);
    assert.equal((await wrong.reservations.closed())?.code, grpc.status.UNAUTHENTICATED);
    assert.equal((await missing.reservations.closed())?.code, grpc.status.UNAUTHENTICATED);
  });

  test('an executor with the right API key registers', async () => {
    const right = new TestExecutor(ts.address, {}, 'the-right-key');
    executors.push(right);
    assert.ok((await right.ready()) >= 5000);
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('Timed out waiting for a condition');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
