// The metrics decorator against a strict fake of the task pipeline it wraps.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Code, GrpcError } from '../../../src-main/core/errors.js';
import type { TaskContext, TaskExecutor } from '../../../src-main/core/executor/task.js';
import { withMetrics } from '../../../src-main/core/executor/task-metrics.js';
import { silentLogger } from '../../../src-main/core/log.js';
import {
  createExecutorMetrics,
  type ExecutorMetrics,
} from '../../../src-main/core/monitoring/executor-metrics.js';
import type { ExecuteResponse } from '../../../src-main/core/proto/index.js';
import { sample } from '../monitoring/scrape.js';

const JWT = 'eyJhbGciOiJIUzI1NiJ9.eyJncm91cF9pZCI6IkdSMTIzIn0.c2VjcmV0LXNpZ25hdHVyZQ';

/** A task context with only what the decorator reads; the publisher records stages. */
function context(groupId = '') {
  const published: string[] = [];
  const queuedAt = new Date(Date.now() - 50);
  const ctx = {
    task: { jwt: JWT, queued_timestamp: { seconds: Math.floor(Date.now() / 1000) - 1, nanos: 0 } },
    reservation: {
      request: { task_id: 't1', jwt: JWT, scheduling_metadata: { task_group_id: groupId } },
      size: { milliCpu: 600, memoryBytes: 400e6 },
      queuedAt,
    },
    publisher: {
      publish: async (stage: string, state?: string) => void published.push(state ?? stage),
      complete: async () => undefined,
      close: async () => undefined,
    },
    timeline: { ioStats: {} },
    cleanups: [],
    logger: silentLogger,
  } as unknown as TaskContext;
  return { ctx, published };
}

/** A pipeline that publishes the usual phases, fills the timeline and answers `response`. */
function pipeline(response: ExecuteResponse, onPhase?: (state: string) => Promise<void>) {
  const inner: TaskExecutor = {
    async execute(ctx) {
      const t = ctx.timeline;
      t.workerStart = new Date();
      for (const state of [
        'DOWNLOADING_INPUTS',
        'EXECUTING_COMMAND',
        'UPLOADING_OUTPUTS',
      ] as const) {
        await ctx.publisher.publish('EXECUTING', state);
        await onPhase?.(state);
      }
      t.inputFetchStart = t.inputFetchCompleted = t.executionStart = new Date();
      t.executionCompleted = t.outputUploadStart = t.outputUploadCompleted = new Date();
      t.workerCompleted = new Date();
      t.isolationType = 'none';
      Object.assign(t.ioStats, { file_download_count: 4, file_upload_count: 3 });
      return response;
    },
  };
  return inner;
}

async function text(metrics: ExecutorMetrics): Promise<string> {
  return metrics.registry.metrics();
}

const executing = (metrics: ExecutorMetrics, stage: string) =>
  text(metrics).then((t) => sample(t, 'buildbuddy_remote_execution_tasks_executing', { stage }));

describe('task metrics decorator', () => {
  test('a running task is counted in the stage it is in', async () => {
    const metrics = createExecutorMetrics();
    const seen: Record<string, number | undefined> = {};
    const inner = pipeline({ result: { exit_code: 0 } }, async (state) => {
      seen[state] = await executing(metrics, STAGES[state]);
    });
    const { ctx, published } = context();

    await withMetrics(inner, metrics).execute(ctx);

    assert.deepEqual(seen, { DOWNLOADING_INPUTS: 1, EXECUTING_COMMAND: 1, UPLOADING_OUTPUTS: 1 });
    assert.deepEqual(published, ['DOWNLOADING_INPUTS', 'EXECUTING_COMMAND', 'UPLOADING_OUTPUTS']);
    for (const stage of ['init', 'input_fetch', 'execution', 'output_upload'])
      assert.equal(await executing(metrics, stage), 0, `stage ${stage} after the task`);
    const t = await text(metrics);
    assert.equal(sample(t, 'buildbuddy_remote_execution_file_download_count_sum'), 4);
    assert.equal(sample(t, 'buildbuddy_remote_execution_file_upload_count_sum'), 3);
    const queued = { stage: 'queued', group_id: 'ANON' };
    const durations = 'buildbuddy_remote_execution_executed_action_metadata_durations_usec';
    assert.ok(sample(t, `${durations}_sum`, queued)! >= 1e6, 'queued since queued_timestamp');
  });

  test('a timed-out action counts as an execution with status DeadlineExceeded', async () => {
    const metrics = createExecutorMetrics();
    const timedOut = { result: { exit_code: 143 }, status: { code: Code.DEADLINE_EXCEEDED } };
    await withMetrics(pipeline(timedOut), metrics).execute(context().ctx);

    const t = await text(metrics);
    const labels = { exit_code: '143', status: 'DeadlineExceeded', isolation: 'none' };
    assert.equal(sample(t, 'buildbuddy_remote_execution_count', labels), 1);
    assert.equal(sample(t, 'buildbuddy_remote_execution_tasks_started_count'), 1);
  });

  test('a cache hit or an error before execution is a task but not an execution', async () => {
    const metrics = createExecutorMetrics();
    const cached: TaskExecutor = {
      execute: async () => ({ result: { exit_code: 0 }, cached_result: true }),
    };
    const failing: TaskExecutor = {
      execute: async (ctx) => {
        await ctx.publisher.publish('EXECUTING', 'DOWNLOADING_INPUTS');
        throw new GrpcError(Code.FAILED_PRECONDITION, 'missing input');
      },
    };
    await withMetrics(cached, metrics).execute(context().ctx);
    await assert.rejects(withMetrics(failing, metrics).execute(context().ctx), /missing input/);

    const t = await text(metrics);
    assert.equal(sample(t, 'buildbuddy_remote_execution_tasks_started_count'), 2);
    assert.equal(sample(t, 'buildbuddy_executor_task_duration_seconds_count'), 2);
    assert.doesNotMatch(t, /^buildbuddy_remote_execution_count\{/m);
    assert.equal(await executing(metrics, 'input_fetch'), 0);
  });

  test('labels carry the task group but never the JWT', async () => {
    const metrics = createExecutorMetrics();
    await withMetrics(pipeline({ result: { exit_code: 0 } }), metrics).execute(
      context('GR123').ctx,
    );

    const t = await text(metrics);
    const execution = { stage: 'execution', group_id: 'GR123' };
    const durations = 'buildbuddy_remote_execution_executed_action_metadata_durations_usec_count';
    assert.equal(sample(t, durations, execution), 1);
    for (const part of JWT.split('.')) assert.ok(!t.includes(part), 'a JWT part is in the metrics');
  });
});

const STAGES: Record<string, string> = {
  DOWNLOADING_INPUTS: 'input_fetch',
  EXECUTING_COMMAND: 'execution',
  UPLOADING_OUTPUTS: 'output_upload',
};
