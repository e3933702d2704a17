import { createContentStore, type CasClients } from '../cas/client.js';
import type { ExecutorConfig } from '../config.js';
import { digestKey, type BlobDigest } from '../digest.js';
import { Code, codeOf, GrpcError, messageOf } from '../errors.js';
import type { Identity } from '../identity.js';
import type { Logger } from '../log.js';
import type {
  ExecuteResponse,
  ExecutionClient,
  ExecutionTask__Output,
  SchedulerClient,
} from '../proto/index.js';
import { taskCallMetadata } from './call-metadata.js';
import { leaseTask, type TaskLease } from './lease.js';
import { boolProperty, PROPERTY, taskPlatform } from './platform.js';
import { openPublisher } from './publisher.js';
import type { TaskContext, TaskExecutor } from './task.js';
import { executedActionMetadata } from './task-metadata.js';
import type { QueuedReservation } from './task-queue.js';

/** What became of one reservation. */
export type AttemptOutcome =
  /** Another executor won the lease (or the task is gone): nothing ran. */
  | 'dropped'
  /** The ExecuteResponse was published with status OK (any exit code). */
  | 'completed'
  /** An error was published as the task's result. */
  | 'failed'
  /** The task was handed back to the scheduler for another attempt. */
  | 're-enqueued'
  /** The scheduler withdrew the task while it ran (its client went away). */
  | 'cancelled';

export interface AttemptDeps {
  config: ExecutorConfig;
  identity: Identity;
  scheduler: SchedulerClient;
  execution: ExecutionClient;
  cas: CasClients;
  /** The decorated task pipeline. */
  executor: TaskExecutor;
  /** Aborted when the executor stops: running tasks are re-enqueued. */
  stopSignal: AbortSignal;
  logger: Logger;
}

/**
 * One attempt at a reservation, start to end: lease the task, run it
 * through the executor, publish the result and close the lease. Errors
 * follow BuildBuddy's retry rules (see shouldRetry): either the error is
 * published as the result and the task finalized, or nothing is published
 * and the task is re-enqueued. Never throws.
 */
export async function runAttempt(
  reservation: QueuedReservation,
  deps: AttemptDeps,
): Promise<AttemptOutcome> {
  const { request } = reservation;
  const taskLogger = deps.logger.child({ task_id: request.task_id });

  // Claim the task; most reservations end here because another executor won.
  let lease: TaskLease | undefined;
  try {
    lease = await leaseTask({
      client: deps.scheduler,
      taskId: request.task_id,
      jwt: request.jwt,
      executorId: deps.identity.executorId,
      executorHostname: deps.identity.hostname,
      reconnect: deps.config.enable_lease_reconnect,
      signal: deps.stopSignal,
      logger: taskLogger,
    });
  } catch (err) {
    taskLogger.warn({ code: codeOf(err), err: messageOf(err) }, 'Failed to lease the task');
    return 'dropped';
  }
  if (lease === undefined) return 'dropped';

  // Run it with the task's credentials, then publish and close the lease.
  const ctx = taskContext(reservation, lease, deps, taskLogger);
  try {
    const response = await deps.executor.execute(ctx);
    return await finish(ctx, lease, response);
  } catch (err) {
    return await fail(ctx, lease, toGrpcError(err), deps);
  } finally {
    for (const cleanup of ctx.cleanups)
      await cleanup().catch((err) =>
        ctx.logger.warn({ err: messageOf(err) }, 'Failed to clean up after the task'),
      );
  }
}

/** Publishes the response; if that fails the task is re-enqueued. */
async function finish(
  ctx: TaskContext,
  lease: TaskLease,
  response: ExecuteResponse,
): Promise<AttemptOutcome> {
  try {
    await ctx.publisher.complete(response);
    await ctx.publisher.close();
  } catch (err) {
    await lease.close(toGrpcError(err));
    return 're-enqueued';
  }
  await lease.close();
  return (response.status?.code ?? 0) === Code.OK ? 'completed' : 'failed';
}

/** Publishes the error as the result, or hands the task back (see shouldRetry). */
async function fail(
  ctx: TaskContext,
  lease: TaskLease,
  error: GrpcError,
  deps: AttemptDeps,
): Promise<AttemptOutcome> {
  if (lease.cancelled) {
    await ctx.publisher.close().catch(() => undefined);
    await lease.close();
    return 'cancelled';
  }
  if (lease.signal.aborted || deps.stopSignal.aborted || shouldRetry(error, ctx)) {
    ctx.logger.info({ code: error.code, err: error.message }, 'Re-enqueuing the task');
    await ctx.publisher.close().catch(() => undefined);
    await lease.close(error);
    return 're-enqueued';
  }
  const response: ExecuteResponse = {
    status: { code: error.code, message: error.message, details: error.details },
    result: { execution_metadata: executedActionMetadata(ctx, deps.identity) },
  };
  return finish(ctx, lease, response);
}

/**
 * BuildBuddy's retry rule: an error is retried on another executor unless
 * the platform says `retry=false`, the error is the request's fault
 * (INVALID_ARGUMENT, FAILED_PRECONDITION, UNAUTHENTICATED) or a timeout, or
 * the client is Bazel, which retries on its own and must see the error.
 * Only BuildBuddy's CI runner and GitHub Actions runners are not Bazel.
 */
export function shouldRetry(error: GrpcError, ctx: Pick<TaskContext, 'task' | 'platform'>) {
  if (!boolProperty(ctx.platform, PROPERTY.retry, true)) return false;
  const final = [
    Code.INVALID_ARGUMENT,
    Code.FAILED_PRECONDITION,
    Code.UNAUTHENTICATED,
    Code.DEADLINE_EXCEEDED,
  ];
  if (final.includes(error.code)) return false;
  return !isBazel(ctx.task, ctx.platform);
}

function isBazel(task: ExecutionTask__Output, platform: Map<string, string>): boolean {
  const ciRunner = task.command?.arguments[0] === './buildbuddy_ci_runner';
  return !ciRunner && !platform.has(PROPERTY.githubActionsRunnerLabels);
}

function taskContext(
  reservation: QueuedReservation,
  lease: TaskLease,
  deps: AttemptDeps,
  taskLogger: Logger,
): TaskContext {
  const { task } = lease;
  const actionDigest = actionDigestOf(task);
  const metadata = taskCallMetadata({
    task,
    reservationJwt: reservation.request.jwt,
    hostId: deps.identity.hostId,
    clientType: deps.config.grpc_client_type,
  });
  const publishMetadata = metadata.clone();
  if (deps.config.region) publishMetadata.set('x-buildbuddy-executor-region', deps.config.region);
  const logger = taskLogger.child({
    action_digest: digestKey(actionDigest),
  });
  return {
    task,
    reservation,
    actionDigest,
    platform: taskPlatform(task),
    publisher: openPublisher({
      client: deps.execution,
      executionId: task.execution_id,
      actionDigest,
      metadata: publishMetadata,
      republishIntervalMs: deps.config.task_progress_publish_interval,
      logger,
    }),
    store: createContentStore(deps.cas, {
      instanceName: task.execute_request?.instance_name ?? '',
      metadata,
      logger,
    }),
    signal: AbortSignal.any([lease.signal, deps.stopSignal]),
    timeline: { ioStats: {} },
    cleanups: [],
    logger,
  };
}

/** ExecuteRequest.action_digest as sent; validated where it is used. */
function actionDigestOf(task: ExecutionTask__Output): BlobDigest {
  const digest = task.execute_request?.action_digest;
  return { hash: digest?.hash ?? '', size_bytes: Number(digest?.size_bytes ?? 0) };
}

function toGrpcError(err: unknown): GrpcError {
  if (err instanceof GrpcError) return err;
  const code = codeOf(err);
  return new GrpcError(code === Code.UNKNOWN ? Code.INTERNAL : code, messageOf(err));
}
