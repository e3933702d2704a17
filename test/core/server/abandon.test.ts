// Executions whose clients all went away: after the abandon grace the
// server cancels them, first against a scripted executor (the protocol's
// messages one by one), then against the real executor running real
// processes.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { startExecutor, type Executor } from '../../../src-main/core/executor/executor.js';
import type { Operation__Output } from '../../../src-main/core/proto/index.js';
import { testConfig, testIdentity } from '../executor/executor-harness.js';
import { ReapiClient } from '../executor/reapi-client.js';
import {
  completedOp,
  executingOp,
  responseOf,
  sleep,
  startTestServer,
  TestClient,
  TestExecutor,
  type Inbox,
  type TestServer,
} from './scheduler-harness.js';

const CANCELLED_MESSAGE = 'Execution cancelled: no client was waiting for it';

/** Reads Operations until the done one, allowing `timeoutMs` for each. */
async function doneOp(inbox: Inbox<Operation__Output>, timeoutMs = 10_000) {
  for (;;) {
    const op = await inbox.next(timeoutMs);
    if (op.done) return op;
  }
}

async function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('Condition not met in time');
    await sleep(10);
  }
}

function taskExists(executor: TestExecutor, taskId: string): Promise<boolean> {
  return new Promise((resolve, reject) =>
    executor.scheduler.TaskExists({ task_id: taskId }, (err, res) =>
      err ? reject(err) : resolve(res!.exists),
    ),
  );
}

function assertCancelled(op: Operation__Output): void {
  const response = responseOf(op);
  assert.equal(response?.status?.code, grpc.status.CANCELLED);
  assert.equal(response?.status?.message, CANCELLED_MESSAGE);
  assert.equal(response?.result, null);
}

describe('abandoned executions, scripted executor', () => {
  let ts: TestServer;
  let client: TestClient;
  const executors: TestExecutor[] = [];

  before(async () => {
    ts = await startTestServer({
      leaseDurationMs: 1_000,
      leaseGraceMs: 1_000,
      abandonGraceMs: 100,
    });
    client = new TestClient(ts.address);
  });
  afterEach(() => {
    for (const e of executors.splice(0)) e.close();
  });
  after(async () => {
    client.close();
    await ts.stop();
  });

  async function connectExecutor(proactive: boolean): Promise<TestExecutor> {
    const executor = new TestExecutor(ts.address, { supports_proactive_cancellation: proactive });
    executors.push(executor);
    await executor.ready();
    return executor;
  }

  test('a queued task abandoned by its client is withdrawn and cannot be leased', async () => {
    const proactive = await connectExecutor(true);
    const plain = await connectExecutor(false);
    const { actionDigest } = await client.uploadAction({ args: ['queued', 'abandoned'] });
    const leaving = new TestClient(ts.address);
    const queued = await leaving.execute(actionDigest).next();
    assert.equal(await proactive.nextReservation(), queued.name);
    assert.equal(await plain.nextReservation(), queued.name);

    leaving.close();

    // The executor that supports it is told; the other finds out on claiming.
    const withdrawn = await proactive.reservations.next();
    assert.equal(withdrawn.cancel_task_reservation_request?.task_id, queued.name);
    await plain.reservations.expectNothing(100);
    const err = await plain.lease(queued.name).responses.closed();
    assert.equal(err?.code, grpc.status.NOT_FOUND);

    assertCancelled(await doneOp(client.waitExecution(queued.name)));
    assert.equal(ts.server.queueLength(), 0);
  });

  test('a running task abandoned by its client: keep-alive NOT_FOUND, late publish dropped, no re-enqueue', async () => {
    const executor = await connectExecutor(false);
    const { actionDigest } = await client.uploadAction({ args: ['running', 'abandoned'] });
    const leaving = new TestClient(ts.address);
    const queued = await leaving.execute(actionDigest).next();
    const taskId = await executor.nextReservation();
    const lease = executor.lease(taskId);
    const { lease_id } = await lease.responses.next();
    assert.equal(await executor.publish([executingOp(taskId, actionDigest)]), undefined);

    leaving.close();
    for (let i = 0; i < 100 && (await taskExists(executor, taskId)); i++) await sleep(20);
    assert.equal(await taskExists(executor, taskId), false, 'the task was cancelled');

    // The next keep-alive tells the executor the task is gone.
    lease.send({});
    const err = await lease.responses.closed();
    assert.equal(err?.code, grpc.status.NOT_FOUND);
    assert.match(err!.details, /disappeared, possibly cancelled/);

    // What the executor still sends is accepted and changes nothing.
    const result = { exit_code: 0 };
    assert.equal(await executor.publish([completedOp(taskId, actionDigest, result)]), undefined);
    await new Promise<void>((resolve, reject) =>
      executor.scheduler.ReEnqueueTask({ task_id: taskId, lease_id, reason: 'aborted' }, (e) =>
        e ? reject(e) : resolve(),
      ),
    );
    assert.equal(await taskExists(executor, taskId), false, 'not resurrected');
    await executor.reservations.expectNothing(200);
    assertCancelled(await doneOp(client.waitExecution(queued.name)));
  });
});

describe('abandoned executions, real executor', () => {
  const GRACE_MS = 400;
  let dir: string;
  let ts: TestServer;
  let client: TestClient;
  let reapi: ReapiClient;
  let executor: Executor | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'idlebuild-abandon-'));
    ts = await startTestServer({
      leaseDurationMs: 1_000,
      leaseGraceMs: 1_000,
      reconnectGraceMs: 200,
      abandonGraceMs: GRACE_MS,
    });
    client = new TestClient(ts.address);
    reapi = new ReapiClient(ts.address);
  });
  afterEach(async () => {
    await executor?.stop({ graceMs: 0 });
    executor = undefined;
  });
  after(async () => {
    client.close();
    reapi.close();
    await ts.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** Starts an executor and a directory for the test's marker files. */
  async function setUp(name: string, milliCpu = 2000): Promise<string> {
    executor = await startExecutor({
      config: testConfig(join(dir, name), ts.address),
      identity: testIdentity(`host-${name}`, { assignableMilliCpu: milliCpu }),
    });
    await until(() => executor!.snapshot().connected);
    const marks = join(dir, `${name}-marks`);
    await mkdir(marks);
    return marks;
  }

  test('a client that disconnects from a running action: the process is killed and the execution ends CANCELLED', async () => {
    const marks = await setUp('kill');
    const runs = join(marks, 'runs');
    const action = await reapi.uploadAction({
      args: ['sh', '-c', `echo $$ >> ${runs}; exec sleep 30`],
      files: { 'kill.txt': 'kill' },
    });
    const leaving = new TestClient(ts.address);
    const queued = await leaving.execute(action).next();
    await until(() => existsSync(runs) && executor!.snapshot().active === 1, 10_000);
    const pid = Number((await readFile(runs, 'utf8')).trim());
    assert.ok(isAlive(pid), 'the action is running');

    const disconnectedAt = Date.now();
    leaving.close();
    await until(() => !isAlive(pid), 10_000);
    const killedAfter = Date.now() - disconnectedAt;
    assert.ok(killedAfter < 5_000, `the process was killed ${killedAfter} ms after the disconnect`);
    await until(() => executor!.snapshot().active === 0);

    assertCancelled(await doneOp(client.waitExecution(queued.name)));

    // Nothing was published as a result and the task did not come back.
    await sleep(1_200);
    const snapshot = executor!.snapshot();
    assert.equal(snapshot.completed + snapshot.failed, 0);
    assert.equal(snapshot.active + snapshot.queueLength, 0);
    assert.equal((await readFile(runs, 'utf8')).trim().split('\n').length, 1, 'it ran once');
    assert.equal(ts.server.queueLength(), 0);
  });

  test('a client that re-attaches with WaitExecution within the grace gets the normal result', async () => {
    const marks = await setUp('reattach');
    const started = join(marks, 'started');
    const action = await reapi.uploadAction({
      args: ['sh', '-c', `touch ${started}; sleep 1.5; echo done > out`],
      files: { 'reattach.txt': 'reattach' },
      outputPaths: ['out'],
    });
    const leaving = new TestClient(ts.address);
    const queued = await leaving.execute(action).next();
    await until(() => existsSync(started), 10_000);

    leaving.close();
    await sleep(GRACE_MS / 2);
    const done = await doneOp(client.waitExecution(queued.name));

    const response = responseOf(done)!;
    assert.equal(response.status?.code ?? 0, grpc.status.OK);
    assert.equal(response.result?.exit_code, 0);
    assert.equal(await reapi.read(response.result!.output_files[0].digest), 'done\n');
  });

  test('a queued task whose client goes away is never started', async () => {
    const marks = await setUp('queued', 1000);
    const release = join(marks, 'release');
    const firstStarted = join(marks, 'first-started');
    const secondStarted = join(marks, 'second-started');
    const oneCpu = { EstimatedCPU: '1' };

    // The first action takes the executor's whole capacity until released.
    const first = await reapi.uploadAction({
      args: ['sh', '-c', `touch ${firstStarted}; while [ ! -e ${release} ]; do sleep 0.05; done`],
      files: { 'first.txt': 'first' },
      platform: oneCpu,
    });
    const firstOps = client.execute(first);
    await until(() => existsSync(firstStarted), 10_000);

    // The second waits in the executor's queue; its client leaves.
    const second = await reapi.uploadAction({
      args: ['sh', '-c', `touch ${secondStarted}`],
      files: { 'second.txt': 'second' },
      platform: oneCpu,
    });
    const leaving = new TestClient(ts.address);
    const queued = await leaving.execute(second).next();
    await until(() => executor!.snapshot().queueLength === 1);
    leaving.close();

    // The reservation is withdrawn (proactive cancellation) and the execution ends.
    await until(() => executor!.snapshot().queueLength === 0);
    assertCancelled(await doneOp(client.waitExecution(queued.name)));

    // Once capacity frees up, the second action still does not start.
    await writeFile(release, '');
    const firstDone = responseOf(await doneOp(firstOps))!;
    assert.equal(firstDone.status?.code ?? 0, grpc.status.OK);
    assert.equal(firstDone.result?.exit_code, 0);
    await sleep(500);
    assert.equal(existsSync(secondStarted), false, 'the abandoned action never ran');
    assert.equal(executor!.snapshot().active, 0);
    assert.equal(executor!.snapshot().completed, 1);
  });

  test('one of two merged Executes disconnecting does not cancel the execution', async () => {
    await setUp('merged');
    const action = await reapi.uploadAction({
      args: ['sh', '-c', 'sleep 1.2; echo merged > out'],
      files: { 'merged.txt': 'merged' },
      outputPaths: ['out'],
    });
    const staying = client.execute(action);
    const queued = await staying.next();
    const leaving = new TestClient(ts.address);
    assert.equal((await leaving.execute(action).next()).name, queued.name);

    leaving.close();

    const response = responseOf(await doneOp(staying))!;
    assert.equal(response.status?.code ?? 0, grpc.status.OK);
    assert.equal(response.result?.exit_code, 0);
    assert.equal(await reapi.read(response.result!.output_files[0].digest), 'merged\n');
  });
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
