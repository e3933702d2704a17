import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { digestOf } from '../../../src-main/core/digest.js';
import { encode } from '../../../src-main/core/proto/index.js';
import {
  completedOp,
  executingOp,
  responseOf,
  stageOf,
  startTestServer,
  taskOf,
  TestClient,
  TestExecutor,
  untilDone,
  violationsOf,
  type TestServer,
} from './scheduler-harness.js';

const STDOUT = Buffer.from('hello\n');

/** Runs one task as an executor would, ending with the given exit code. */
async function runTask(executor: TestExecutor, exitCode: number) {
  const taskId = await executor.nextReservation();
  const lease = executor.lease(taskId);
  const first = await lease.responses.next();
  const task = taskOf(first);
  const actionDigest = task.execute_request!.action_digest!;
  const result = { exit_code: exitCode, stdout_digest: digestOf(STDOUT) };
  const err = await executor.publish([
    executingOp(taskId, actionDigest),
    completedOp(taskId, actionDigest, result),
  ]);
  assert.equal(err, undefined);
  assert.equal(await lease.finalize(), true);
  return { taskId, task, first };
}

describe('Execution service', () => {
  let ts: TestServer;
  let client: TestClient;
  let executor: TestExecutor;

  before(async () => {
    ts = await startTestServer();
    client = new TestClient(ts.address);
    executor = new TestExecutor(ts.address);
    await client.upload([STDOUT]);
  });
  after(async () => {
    client.close();
    executor.close();
    await ts.stop();
  });

  test('an action runs QUEUED, EXECUTING, COMPLETED and its exit-0 result is cached', async () => {
    const { actionDigest } = await client.uploadAction({ args: ['run', 'ok'] });
    const metadata = new grpc.Metadata();
    metadata.set(
      'build.bazel.remote.execution.v2.requestmetadata-bin',
      encode('build.bazel.remote.execution.v2.RequestMetadata', {
        tool_invocation_id: 'inv-1',
        tool_details: { tool_name: 'bazel' },
      }),
    );
    const ops = client.execute(actionDigest, { metadata });

    const queued = await ops.next();
    assert.equal(stageOf(queued), 'QUEUED');
    assert.match(
      queued.name,
      new RegExp(`^/uploads/[0-9a-f-]{36}/blobs/${actionDigest.hash}/\\d+$`),
    );

    const { task, first } = await runTask(executor, 0);
    assert.equal(task.execution_id, queued.name);
    assert.equal(task.invocation_id, 'inv-1');
    assert.equal(task.request_metadata?.tool_details, null);
    assert.deepEqual(task.command?.arguments, ['run', 'ok']);
    assert.equal(first.lease_id.length, 20);
    assert.equal(first.reconnect_token, first.lease_id);

    const rest = await untilDone(ops);
    assert.deepEqual(rest.map(stageOf), ['EXECUTING', 'COMPLETED']);
    const response = responseOf(rest[1])!;
    assert.equal(response.result?.exit_code, 0);
    assert.equal(response.cached_result, false);
    assert.equal(await ops.closed(), undefined);

    const cached = await client.getActionResult(actionDigest);
    assert.equal((cached as { exit_code?: number }).exit_code, 0);
  });

  test('a non-zero exit code is returned but not cached', async () => {
    const { actionDigest } = await client.uploadAction({ args: ['run', 'fails'] });
    const ops = client.execute(actionDigest);
    await runTask(executor, 3);
    const done = (await untilDone(ops)).at(-1)!;
    assert.equal(responseOf(done)?.result?.exit_code, 3);
    const cached = (await client.getActionResult(actionDigest)) as grpc.ServiceError;
    assert.equal(cached.code, grpc.status.NOT_FOUND);
  });

  test('a do_not_cache action is not cached even with exit code 0', async () => {
    const { actionDigest } = await client.uploadAction({ args: ['nocache'], doNotCache: true });
    const ops = client.execute(actionDigest);
    await runTask(executor, 0);
    await untilDone(ops);
    const cached = (await client.getActionResult(actionDigest)) as grpc.ServiceError;
    assert.equal(cached.code, grpc.status.NOT_FOUND);
  });

  test('an Action Cache hit answers at once without scheduling a task', async () => {
    const { actionDigest } = await client.uploadAction({ args: ['run', 'twice'] });
    const firstRun = client.execute(actionDigest);
    await runTask(executor, 0);
    await untilDone(firstRun);

    const ops = await untilDone(client.execute(actionDigest));
    assert.equal(ops.length, 1);
    const response = responseOf(ops[0])!;
    assert.equal(response.cached_result, true);
    assert.equal(response.status?.code, 0);
    assert.equal(response.result?.exit_code, 0);
    await executor.reservations.expectNothing(100);
    assert.equal(ts.server.queueLength(), 0);
    const waited = await untilDone(client.waitExecution(ops[0].name));
    assert.equal(responseOf(waited[0])?.cached_result, true);
  });

  test('skip_cache_lookup runs the action again despite a cached result', async () => {
    const { actionDigest } = await client.uploadAction({ args: ['run', 'again'] });
    const firstRun = client.execute(actionDigest);
    await runTask(executor, 0);
    await untilDone(firstRun);

    const ops = client.execute(actionDigest, { skipCacheLookup: true });
    assert.equal(stageOf(await ops.next()), 'QUEUED');
    await runTask(executor, 0);
    const done = (await untilDone(ops)).at(-1)!;
    assert.equal(responseOf(done)?.cached_result, false);
  });

  test('identical in-flight Executes share one execution', async () => {
    const { actionDigest } = await client.uploadAction({ args: ['merged'] });
    const a = client.execute(actionDigest);
    const queued = await a.next();
    const b = client.execute(actionDigest);
    assert.equal((await b.next()).name, queued.name);
    await runTask(executor, 0);
    await untilDone(a);
    await untilDone(b);
    await executor.reservations.expectNothing(100);
  });

  test('a missing Action is FAILED_PRECONDITION with a MISSING violation', async () => {
    const { actionDigest } = await client.uploadAction({ args: ['x1'], skipUpload: ['action'] });
    const err = await client.execute(actionDigest).closed();
    assert.equal(err?.code, grpc.status.FAILED_PRECONDITION);
    assert.deepEqual(
      violationsOf(err!).map((v) => [v.type, v.subject]),
      [['MISSING', `blobs/${actionDigest.hash}/${actionDigest.size_bytes}`]],
    );
  });

  test('a missing input root and Command are both reported as MISSING', async () => {
    const uploaded = await client.uploadAction({
      args: ['x2'],
      skipUpload: ['inputRoot', 'command'],
    });
    const err = await client.execute(uploaded.actionDigest).closed();
    assert.equal(err?.code, grpc.status.FAILED_PRECONDITION);
    const subjects = violationsOf(err!)
      .map((v) => v.subject)
      .sort();
    const expected = [uploaded.commandDigest, uploaded.inputRootDigest]
      .map((d) => `blobs/${d.hash}/${d.size_bytes}`)
      .sort();
    assert.deepEqual(subjects, expected);
  });

  test('a malformed action digest is INVALID_ARGUMENT', async () => {
    const err = await client.execute({ hash: 'nothex', size_bytes: 3 }).closed();
    assert.equal(err?.code, grpc.status.INVALID_ARGUMENT);
  });

  test('WaitExecution on an unknown name is NOT_FOUND', async () => {
    const err = await client.waitExecution('/uploads/nope/blobs/abc/1').closed();
    assert.equal(err?.code, grpc.status.NOT_FOUND);
  });

  test('WaitExecution on a running execution streams it to completion', async () => {
    const { actionDigest } = await client.uploadAction({ args: ['waited'] });
    const ops = client.execute(actionDigest);
    const queued = await ops.next();
    const waiter = client.waitExecution(queued.name);
    assert.equal(stageOf(await waiter.next()), 'QUEUED');
    await runTask(executor, 0);
    const seen = await untilDone(waiter);
    assert.deepEqual(seen.map(stageOf), ['EXECUTING', 'COMPLETED']);
    assert.equal(await waiter.closed(), undefined);

    // After completion it still answers, with the final Operation.
    const later = await untilDone(client.waitExecution(queued.name));
    assert.equal(later.length, 1);
    assert.equal(responseOf(later[0])?.result?.exit_code, 0);
  });

  test('an execution whose client disconnects still completes within the abandon grace', async () => {
    const { actionDigest } = await client.uploadAction({ args: ['abandoned'] });
    const other = new TestClient(ts.address);
    const ops = other.execute(actionDigest);
    const queued = await ops.next();
    other.close();
    await runTask(executor, 0);
    const later = await untilDone(client.waitExecution(queued.name));
    assert.equal(stageOf(later.at(-1)!), 'COMPLETED');
  });

  test('PublishOperation for an unknown execution is NOT_FOUND', async () => {
    const digest = digestOf(Buffer.from('no such action'));
    const err = await executor.publish([executingOp('/uploads/x/blobs/y/1', digest)]);
    assert.equal(err?.code, grpc.status.NOT_FOUND);
  });
});
