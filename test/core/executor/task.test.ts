// The task pipeline end to end: a real embedded server, a real executor
// with the `none` runner, and a REAPI client calling Execute.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';

import type { ContentStore } from '../../../src-main/core/cas/types.js';
import { Code, GrpcError } from '../../../src-main/core/errors.js';
import { shouldRetry } from '../../../src-main/core/executor/attempt.js';
import { startExecutor, type Executor } from '../../../src-main/core/executor/executor.js';
import {
  parseMemoryBytes,
  parseMilliCpu,
  taskPlatform,
} from '../../../src-main/core/executor/platform.js';
import {
  effectiveTimeout,
  terminationGrace,
  type TaskContext,
  type TaskExecutor,
} from '../../../src-main/core/executor/task.js';
import { withCacheCheck } from '../../../src-main/core/executor/task-cache-check.js';
import { silentLogger } from '../../../src-main/core/log.js';
import {
  unpackAny,
  type ActionResult__Output,
  type ExecutionTask__Output,
} from '../../../src-main/core/proto/index.js';
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
    assert.deepEqual(
      operations.map(progressOf).filter(Boolean),
      [],
      'nothing was downloaded or run',
    );
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
    assert.deepEqual(
      (await readdir(join(dir, 'build'))).filter((n) => n !== '.idlebuild.lock'),
      [],
      "only the executor's lock is left in the build root",
    );
    const snapshot = executor.snapshot();
    assert.equal(snapshot.connected, true);
    assert.equal(snapshot.active, 0);
    assert.equal(snapshot.completed, 2, 'the success and the non-zero exit');
    assert.equal(snapshot.failed, 5, 'the timeout and four rejected actions');
  });
});

describe('task rules', () => {
  const CONFIG = {
    default_task_timeout: 8 * 3_600_000,
    max_task_timeout: 24 * 3_600_000,
    default_termination_grace_period: 0,
    max_termination_grace_period: 60_000,
  };

  test('the timeout comes from the Action, else the platform, else the config', () => {
    const platform = new Map([['default-timeout', '15m']]);
    assert.equal(effectiveTimeout(5_000, platform, CONFIG), 5_000);
    assert.equal(effectiveTimeout(0, platform, CONFIG), 900_000);
    assert.equal(effectiveTimeout(0, new Map(), CONFIG), 8 * 3_600_000);
  });

  test('a timeout above max_task_timeout or a malformed default-timeout is INVALID_ARGUMENT', () => {
    const isInvalid = (err: unknown) => (err as GrpcError).code === Code.INVALID_ARGUMENT;
    assert.throws(() => effectiveTimeout(25 * 3_600_000, new Map(), CONFIG), isInvalid);
    assert.throws(
      () => effectiveTimeout(0, new Map([['default-timeout', 'soon']]), CONFIG),
      isInvalid,
    );
  });

  test('the termination grace period is capped at the maximum', () => {
    assert.equal(terminationGrace(new Map([['termination-grace-period', '10s']]), CONFIG), 10_000);
    assert.equal(terminationGrace(new Map([['termination-grace-period', '1h']]), CONFIG), 60_000);
    assert.equal(terminationGrace(new Map(), CONFIG), 0);
  });

  test('platform properties: Action over Command, overrides over both, names lower-cased', () => {
    const task = {
      action: { platform: { properties: [{ name: 'OSFamily', value: ' linux ' }] } },
      command: { platform: { properties: [{ name: 'Pool', value: 'ignored' }] } },
      platform_overrides: { properties: [{ name: 'osfamily', value: 'darwin' }] },
    } as unknown as ExecutionTask__Output;
    assert.deepEqual([...taskPlatform(task)], [['osfamily', 'darwin']]);
  });

  test('EstimatedCPU and EstimatedMemory parse as BuildBuddy writes them', () => {
    assert.equal(parseMilliCpu('2'), 2000);
    assert.equal(parseMilliCpu('0.5'), 500);
    assert.equal(parseMilliCpu('4000m'), 4000);
    assert.equal(parseMemoryBytes('2GB'), 2 * 2 ** 30);
    assert.equal(parseMemoryBytes('1M'), 2 ** 20);
    assert.equal(parseMemoryBytes('4096'), 4096);
    assert.throws(() => parseMemoryBytes('lots'));
  });

  test('errors are retried only for non-Bazel clients and retryable codes', () => {
    const bazel = { task: { command: { arguments: ['gcc'] } }, platform: new Map() };
    const ci = {
      task: { command: { arguments: ['./buildbuddy_ci_runner'] } },
      platform: new Map(),
    };
    const gha = { ...bazel, platform: new Map([['github-actions-runner-labels', 'x']]) };
    const noRetry = { ...ci, platform: new Map([['retry', 'false']]) };
    const err = (code: Code) => new GrpcError(code, 'x');
    const ctx = (c: object) => c as Parameters<typeof shouldRetry>[1];
    assert.equal(shouldRetry(err(Code.UNAVAILABLE), ctx(bazel)), false, 'Bazel retries itself');
    assert.equal(shouldRetry(err(Code.UNAVAILABLE), ctx(ci)), true);
    assert.equal(shouldRetry(err(Code.INTERNAL), ctx(gha)), true);
    assert.equal(shouldRetry(err(Code.UNAVAILABLE), ctx(noRetry)), false);
    for (const code of [
      Code.INVALID_ARGUMENT,
      Code.FAILED_PRECONDITION,
      Code.UNAUTHENTICATED,
      Code.DEADLINE_EXCEEDED,
    ])
      assert.equal(shouldRetry(err(code), ctx(ci)), false, Code[code]);
  });
});

describe('cache check', () => {
  const ACTION = { hash: 'b'.repeat(64), size_bytes: 140 };
  const CACHED = { exit_code: 0, stdout_raw: Buffer.from('cached') } as ActionResult__Output;

  /** A context whose store answers only GetActionResult; anything else fails the test. */
  function context(opts: { skip?: boolean; cached?: ActionResult__Output; lookupFails?: boolean }) {
    const published: string[] = [];
    const unexpected = () => {
      throw new Error('unexpected ContentStore call');
    };
    const store: ContentStore = {
      findMissing: unexpected,
      read: unexpected,
      readMany: unexpected,
      readToFile: unexpected,
      writeMany: unexpected,
      getTree: unexpected,
      getActionResult: async (digest) => {
        assert.deepEqual(digest, ACTION);
        if (opts.lookupFails) throw new GrpcError(Code.UNAVAILABLE, 'cache down');
        return opts.cached;
      },
    };
    const ctx = {
      task: { execute_request: { skip_cache_lookup: opts.skip ?? false } },
      actionDigest: ACTION,
      store,
      publisher: {
        publish: async (stage: string) => void published.push(stage),
        complete: unexpected,
        close: unexpected,
      },
      logger: silentLogger,
    } as unknown as TaskContext;
    return { ctx, published };
  }

  const inner: TaskExecutor = { execute: async () => ({ result: { exit_code: 7 } }) };

  test('a hit is answered from the Action Cache without executing', async () => {
    const { ctx, published } = context({ cached: CACHED });
    const response = await withCacheCheck(inner).execute(ctx);
    assert.equal(response.cached_result, true);
    assert.equal(response.result, CACHED);
    assert.deepEqual(published, ['CACHE_CHECK']);
  });

  test('a miss or a failed lookup executes', async () => {
    for (const opts of [{}, { lookupFails: true }]) {
      const { ctx } = context(opts);
      assert.equal((await withCacheCheck(inner).execute(ctx)).result?.exit_code, 7);
    }
  });

  test('skip_cache_lookup skips the check entirely', async () => {
    const { ctx, published } = context({ skip: true, cached: CACHED });
    assert.equal((await withCacheCheck(inner).execute(ctx)).result?.exit_code, 7);
    assert.deepEqual(published, []);
  });
});
