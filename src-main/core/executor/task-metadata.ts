import type { Identity } from '../identity.js';
import { packAny, type ExecuteResponse, type ExecutedActionMetadata } from '../proto/index.js';
import { toDuration, toTimestamp } from './proto-time.js';
import type { TaskContext, TaskExecutor } from './task.js';

/**
 * Decorator: times the worker and attaches ExecutedActionMetadata to the
 * result the inner executor returns. The attempt uses
 * executedActionMetadata() for results of failed tasks.
 */
export function withExecutedActionMetadata(inner: TaskExecutor, identity: Identity): TaskExecutor {
  return {
    async execute(ctx: TaskContext): Promise<ExecuteResponse> {
      ctx.timeline.workerStart = new Date();
      try {
        const response = await inner.execute(ctx);
        ctx.timeline.workerCompleted = new Date();
        if (response.result)
          response.result.execution_metadata = executedActionMetadata(ctx, identity);
        return response;
      } finally {
        ctx.timeline.workerCompleted ??= new Date();
      }
    },
  };
}

/**
 * ExecutedActionMetadata as BuildBuddy's executor fills it: the host ID as
 * worker, the per-process executor ID, the phase timestamps, I/O and usage
 * statistics, and one ExecutionAuxiliaryMetadata.
 */
export function executedActionMetadata(
  ctx: TaskContext,
  identity: Identity,
): ExecutedActionMetadata {
  const t = ctx.timeline;
  const at = (date: Date | undefined) => (date ? toTimestamp(date) : null);
  const auxiliary = packAny('execution_stats.ExecutionAuxiliaryMetadata', {
    platform_overrides: ctx.task.platform_overrides,
    isolation_type: t.isolationType ?? '',
    execute_request: ctx.task.execute_request,
    scheduling_metadata: ctx.reservation.request.scheduling_metadata,
    timeout: t.timeoutMs ? toDuration(t.timeoutMs) : null,
    executor_hostname: identity.hostname,
    experiments: ctx.task.experiments,
    worker_queued_timestamp: toTimestamp(ctx.reservation.queuedAt),
  });
  return {
    worker: identity.hostId,
    executor_id: identity.executorId,
    queued_timestamp: ctx.task.queued_timestamp,
    worker_start_timestamp: at(t.workerStart),
    worker_completed_timestamp: at(t.workerCompleted),
    input_fetch_start_timestamp: at(t.inputFetchStart),
    input_fetch_completed_timestamp: at(t.inputFetchCompleted),
    execution_start_timestamp: at(t.executionStart),
    execution_completed_timestamp: at(t.executionCompleted),
    output_upload_start_timestamp: at(t.outputUploadStart),
    output_upload_completed_timestamp: at(t.outputUploadCompleted),
    io_stats: t.ioStats,
    usage_stats: t.usageStats ?? null,
    auxiliary_metadata: [auxiliary],
  };
}
