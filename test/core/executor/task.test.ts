// The task pipeline end to end: a real embedded server, a real executor
// with the `none` runner, and a REAPI client calling Execute.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';

import { Code } from '../../../src-main/core/errors.js';
import { startExecutor, type Executor } from '../../../src-main/core/executor/executor.js';
import { unpackAny } from '../../../src-main/core/proto/index.js';
import { startServer, type EmbeddedServer } from '../../../src-main/core/server/server.js';
import { testConfig, testIdentity } from './executor-harness.js';
import { progressOf, ReapiClient, stageOf } from './reapi-client.js';

describe('task pipeline', () => {
  let dir: string;
  let server: EmbeddedServer;
  let executor: Executor;
  let client: ReapiClient;
  const identity = testIdentity('host-task-test');

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'idlebuild-task-'));
    server = await startServer({ port: 0, dataDirectory: join(dir, 'server') });
    executor = await startExecutor({ config: testConfig(dir, server.address), identity });
    client = new ReapiClient(server.address);
  });
  after(async () => {
    client.close();
    await executor.stop({ graceMs: 0 });
    await server.close(0);
    await rm(dir, { recursive: true, force: true });
  });

  test('a successful action returns its outputs, stdout and metadata, then hits the cache', async () => {
    const action = await client.uploadAction({
      args: ['sh', '-c', 'mkdir -p out && tr a-z A-Z < src/in.txt > out/up.txt && echo built'],
      files: { 'src/in.txt': 'hello\n' },
      outputPaths: ['out/up.txt'],
    });
    const { operations, response } = await client.execute(action);

    assert.equal(response.status?.code ?? 0, Code.OK);
    const result = response.result!;
    assert.equal(result.exit_code, 0);
    assert.equal(await client.read(result.stdout_digest), 'built\n');
    assert.deepEqual(
      result.output_files.map((f) => f.path),
      ['out/up.txt'],
    );
    assert.equal(await client.read(result.output_files[0].digest), 'HELLO\n');
    const stages = operations.map(stageOf);
    assert.ok(stages.includes('EXECUTING'), `stages: ${stages.join(', ')}`);
    const states = operations.map(progressOf).filter(Boolean);
    assert.deepEqual(
      [...new Set(states)],
      ['DOWNLOADING_INPUTS', 'EXECUTING_COMMAND', 'UPLOADING_OUTPUTS'],
    );

    const metadata = result.execution_metadata!;
    assert.equal(metadata.worker, 'host-task-test');
    assert.equal(metadata.executor_id, identity.executorId);
    for (const field of [
      'worker_start_timestamp',
      'input_fetch_start_timestamp',
      'execution_start_timestamp',
      'execution_completed_timestamp',
      'output_upload_completed_timestamp',
      'worker_completed_timestamp',
    ] as const)
      assert.ok(metadata[field]?.seconds, `${field} is set`);
    assert.ok(metadata.io_stats!.file_download_count >= 1);

    const again = await client.execute(action);
    assert.equal(again.response.cached_result, true);
    assert.equal(again.response.result!.exit_code, 0);
  });

  test('a non-zero exit code is a result with status OK', async () => {
    const action = await client.uploadAction({ args: ['sh', '-c', 'echo oops >&2; exit 3'] });
    const { response } = await client.execute(action);
    assert.equal(response.status?.code ?? 0, Code.OK);
    assert.equal(response.result!.exit_code, 3);
    assert.equal(await client.read(response.result!.stderr_digest), 'oops\n');
  });

  test('a timeout is DEADLINE_EXCEEDED with partial stdout and outputs', async () => {
    const action = await client.uploadAction({
      args: ['sh', '-c', 'echo partial; echo half > out.txt; sleep 30'],
      outputPaths: ['out.txt'],
      timeoutSeconds: 1,
    });
    const started = Date.now();
    const { response } = await client.execute(action);
    assert.ok(Date.now() - started < 10_000);
    assert.equal(response.status?.code, Code.DEADLINE_EXCEEDED);
    assert.equal(await client.read(response.result!.stdout_digest), 'partial\n');
    assert.deepEqual(
      response.result!.output_files.map((f) => f.path),
      ['out.txt'],
    );
    assert.equal(await client.read(response.result!.output_files[0].digest), 'half\n');
  });

  test('an output path that leaves the input root is INVALID_ARGUMENT', async () => {
    const action = await client.uploadAction({
      args: ['sh', '-c', 'echo pwned > ../escape'],
      outputPaths: ['../escape'],
    });
    const { operations, response } = await client.execute(action);
    assert.equal(response.status?.code, Code.INVALID_ARGUMENT);
    assert.match(response.status!.message, /\.\.\/escape/);
    assert.deepEqual(operations.map(progressOf).filter(Boolean), [], 'nothing was downloaded or run');
  });

  test('a missing input blob is FAILED_PRECONDITION with a MISSING violation', async () => {
    const action = await client.uploadAction({
      args: ['cat', 'gone.txt'],
      files: { 'gone.txt': 'never uploaded, unique 7d1c' },
      withhold: ['gone.txt'],
    });
    const { response } = await client.execute(action);
    assert.equal(response.status?.code, Code.FAILED_PRECONDITION);
    const failure = unpackAny('google.rpc.PreconditionFailure', response.status!.details[0]);
    assert.equal(failure?.violations[0].type, 'MISSING');
    assert.match(failure!.violations[0].subject, /^blobs\/[0-9a-f]{64}\/27$/);
  });

  test('an isolation type the executor lacks is INVALID_ARGUMENT', async () => {
    const action = await client.uploadAction({
      args: ['true'],
      platform: { 'workload-isolation-type': 'firecracker' },
    });
    const { response } = await client.execute(action);
    assert.equal(response.status?.code, Code.INVALID_ARGUMENT);
    assert.match(response.status!.message, /firecracker/);
  });

  test('a container image without container isolation is INVALID_ARGUMENT', async () => {
    const action = await client.uploadAction({
      args: ['true'],
      platform: { 'container-image': 'docker://ubuntu:24.04' },
    });
    const { response } = await client.execute(action);
    assert.equal(response.status?.code, Code.INVALID_ARGUMENT);
  });

  test('workspaces are removed and the counters add up', async () => {
    // The client sees the result before the lease closes and the workspace goes.
    for (let i = 0; i < 100 && executor.snapshot().active > 0; i++) await sleep(20);
    assert.deepEqual(await readdir(join(dir, 'build')), []);
    const snapshot = executor.snapshot();
    assert.equal(snapshot.connected, true);
    assert.equal(snapshot.active, 0);
    assert.equal(snapshot.completed, 2, 'the success and the non-zero exit');
    assert.equal(snapshot.failed, 5, 'the timeout and four rejected actions');
  });
});
