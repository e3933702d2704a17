import { performance } from 'node:perf_hooks';

import { Code } from '../errors.js';
import {
  ANONYMOUS_GROUP,
  type DurationStage,
  type ExecutingStage,
  type ExecutorMetrics,
} from '../monitoring/executor-metrics.js';
import type { ExecuteResponse, ExecutionState__Output } from '../proto/index.js';
import type { OperationPublisher, ProgressStage } from './publisher.js';
import type { TaskContext, TaskExecutor } from './task.js';

/**
 * Decorator: records each task in the executor's Prometheus metrics. It
 * counts the task as started, keeps `tasks_executing` on the stage the task
 * is in (as each progress Operation is published), and once the task ends
 * records its duration, the stage durations of its timeline, its file
 * downloads and uploads and, when its Command ran, its exit code and
 * status. Attempt outcomes (completed, failed, re-enqueued) are counted by
 * the executor, which alone knows them. Labels never carry credentials.
 */
export function withMetrics(inner: TaskExecutor, metrics: ExecutorMetrics): TaskExecutor {
  return {
    async execute(ctx: TaskContext): Promise<ExecuteResponse> {
      metrics.tasksStarted.inc();
      const started = performance.now();
      const stage = stageTracker(metrics);
      const publisher: OperationPublisher = {
        publish: (progress, state) => {
          stage.enter(executingStage(progress, state));
          return ctx.publisher.publish(progress, state);
        },
        complete: (response) => ctx.publisher.complete(response),
        close: () => ctx.publisher.close(),
      };
      try {
        const response = await inner.execute({ ...ctx, publisher });
        recordExecution(metrics, ctx, response);
        return response;
      } finally {
        stage.leave();
        metrics.taskDurationSeconds.observe((performance.now() - started) / 1000);
        recordTimeline(metrics, ctx);
      }
    },
  };
}

/** Moves one task between the stages of `tasks_executing`, starting at init. */
function stageTracker(metrics: ExecutorMetrics) {
  let current: ExecutingStage | undefined = 'init';
  metrics.tasksExecuting.inc({ stage: current });
  return {
    enter(next: ExecutingStage | undefined) {
      if (next === undefined || next === current || current === undefined) return;
      metrics.tasksExecuting.dec({ stage: current });
      metrics.tasksExecuting.inc({ stage: next });
      current = next;
    },
    leave() {
      if (current !== undefined) metrics.tasksExecuting.dec({ stage: current });
      current = undefined;
    },
  };
}

/** The `tasks_executing` stage a progress Operation announces, if any. */
function executingStage(
  progress: ProgressStage,
  state: ExecutionState__Output | undefined,
): ExecutingStage | undefined {
  if (progress === 'CACHE_CHECK') return 'check_cache';
  if (progress !== 'EXECUTING') return undefined;
  switch (state) {
    case 'PULLING_CONTAINER_IMAGE':
      return 'pull_image';
    case 'DOWNLOADING_INPUTS':
      return 'input_fetch';
    case 'EXECUTING_COMMAND':
      return 'execution';
    case 'UPLOADING_OUTPUTS':
      return 'output_upload';
    default:
      return undefined;
  }
}

/** `remote_execution_count`, for a response whose Command ran (not a cache hit). */
function recordExecution(metrics: ExecutorMetrics, ctx: TaskContext, response: ExecuteResponse) {
  if (response.cached_result || ctx.timeline.executionStart === undefined) return;
  metrics.executions.inc({
    exit_code: String(response.result?.exit_code ?? 0),
    status: goCodeName(response.status?.code ?? Code.OK),
    isolation: ctx.timeline.isolationType ?? '',
  });
}

/** Stage durations and file transfers, from whatever the timeline holds. */
function recordTimeline(metrics: ExecutorMetrics, ctx: TaskContext): void {
  const t = ctx.timeline;
  const group = ctx.reservation.request.scheduling_metadata?.task_group_id || ANONYMOUS_GROUP;
  const queuedAt = timestampDate(ctx.task.queued_timestamp);
  const stages: [DurationStage, Date | undefined, Date | undefined][] = [
    ['queued', queuedAt, t.workerStart],
    ['worker_queued', ctx.reservation.queuedAt, t.workerStart],
    ['input_fetch', t.inputFetchStart, t.inputFetchCompleted],
    ['execution', t.executionStart, t.executionCompleted],
    ['output_upload', t.outputUploadStart, t.outputUploadCompleted],
    ['worker', t.workerStart, t.workerCompleted],
  ];
  for (const [stage, start, end] of stages) {
    if (!start || !end || end < start) continue;
    const usec = (end.getTime() - start.getTime()) * 1000;
    metrics.stageDurationsUsec.observe({ stage, group_id: group }, usec);
  }

  const io = t.ioStats;
  if (t.inputFetchCompleted) {
    metrics.fileDownload.count.observe(Number(io.file_download_count ?? 0));
    metrics.fileDownload.sizeBytes.observe(Number(io.file_download_size_bytes ?? 0));
    metrics.fileDownload.durationUsec.observe(Number(io.file_download_duration_usec ?? 0));
  }
  if (t.outputUploadStart && t.outputUploadCompleted) {
    const spentUsec = (t.outputUploadCompleted.getTime() - t.outputUploadStart.getTime()) * 1000;
    metrics.fileUpload.count.observe(Number(io.file_upload_count ?? 0));
    metrics.fileUpload.sizeBytes.observe(Number(io.file_upload_size_bytes ?? 0));
    metrics.fileUpload.durationUsec.observe(Number(io.file_upload_duration_usec || spentUsec));
  }
}

function timestampDate(ts: { seconds: number; nanos: number } | null): Date | undefined {
  if (!ts || (ts.seconds === 0 && ts.nanos === 0)) return undefined;
  return new Date(ts.seconds * 1000 + Math.floor(ts.nanos / 1e6));
}

/** Go's name for a status code (codes.Code.String()), as BuildBuddy labels it. */
function goCodeName(code: Code): string {
  if (code === Code.OK) return 'OK';
  if (code === Code.CANCELLED) return 'Canceled';
  const name = Code[code] as string | undefined;
  if (!name) return `Code(${code})`;
  return name
    .toLowerCase()
    .replace(/(^|_)([a-z])/g, (_, __, letter: string) => letter.toUpperCase());
}
