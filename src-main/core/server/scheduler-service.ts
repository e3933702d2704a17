import { createHash, timingSafeEqual } from 'node:crypto';

import type * as grpc from '@grpc/grpc-js';

import { Code, GrpcError, failedPrecondition, invalidArgument, messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import {
  grpcPackage,
  type LeaseTaskRequest__Output,
  type LeaseTaskResponse,
  type RegisterAndStreamWorkRequest__Output,
  type RegisterAndStreamWorkResponse,
  type SchedulerHandlers,
  type ScheduleTaskRequest__Output,
} from '../proto/index.js';
import { toServiceError, type GrpcService } from './grpc-service.js';
import { durationOf, type ExecutorSession, type TaskScheduler } from './scheduler-core.js';
import type { NewTask } from './task-store.js';

export interface SchedulerServiceOptions {
  scheduler: TaskScheduler;
  /** Stores and schedules a task from ScheduleTask (see adoptScheduledTask). */
  scheduleTask: (task: NewTask) => void;
  /** When set, executors must send it as `x-buildbuddy-api-key`. */
  executorApiKey?: string;
  logger: Logger;
}

/** The metadata header that carries an executor's API key. */
export const API_KEY_HEADER = 'x-buildbuddy-api-key';

/**
 * BuildBuddy's scheduler.Scheduler, server side, over the TaskScheduler:
 * executors register and receive reservations on RegisterAndStreamWork,
 * claim and keep tasks on LeaseTask, and may ask TaskExists or
 * ReEnqueueTask. ScheduleTask accepts tasks from a trusted caller; this is a
 * single scheduler, so EnqueueTaskReservation is UNIMPLEMENTED.
 */
export function createSchedulerService(opts: SchedulerServiceOptions): GrpcService {
  const implementation: SchedulerHandlers = {
    RegisterAndStreamWork: (call) => registerAndStreamWork(opts, call),
    LeaseTask: (call) => leaseTask(opts, call),
    TaskExists: (call, callback) => {
      callback(null, { exists: opts.scheduler.taskExists(call.request.task_id) });
    },
    ReEnqueueTask: (call, callback) => {
      const { task_id, lease_id, reason } = call.request;
      opts.scheduler.reEnqueue(task_id, lease_id, reason || 'ReEnqueueTask');
      callback(null, {});
    },
    ScheduleTask: (call, callback) => {
      try {
        opts.scheduleTask(checkScheduleTask(call.request));
        callback(null, {});
      } catch (err) {
        callback(toServiceError(err) as grpc.ServiceError);
      }
    },
    EnqueueTaskReservation: (_call, callback) => {
      const err = new GrpcError(
        Code.UNIMPLEMENTED,
        'EnqueueTaskReservation is not supported: this server is the only scheduler',
      );
      callback(toServiceError(err) as grpc.ServiceError);
    },
  };
  return { definition: grpcPackage().scheduler.Scheduler.service, implementation };
}

/** Compares secrets in constant time, whatever their lengths. */
export function sameSecret(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb);
}

type WorkCall = grpc.ServerDuplexStream<
  RegisterAndStreamWorkRequest__Output,
  RegisterAndStreamWorkResponse
>;

function registerAndStreamWork(opts: SchedulerServiceOptions, call: WorkCall): void {
  const log = opts.logger;
  if (opts.executorApiKey !== undefined) {
    const sent = call.metadata.get(API_KEY_HEADER)[0];
    if (typeof sent !== 'string' || !sameSecret(sent, opts.executorApiKey)) {
      log.warn({ peer: call.getPeer() }, 'Executor rejected: missing or wrong API key');
      const err = new GrpcError(
        Code.UNAUTHENTICATED,
        "Executor API key is missing or wrong: set executor.api_key in the executor's " +
          `config to the server's key (it is sent as "${API_KEY_HEADER}")`,
      );
      call.emit('error', toServiceError(err));
      return;
    }
  }

  let session: ExecutorSession | undefined;
  let closed = false;
  const close = (err?: unknown) => {
    if (closed) return;
    closed = true;
    session?.disconnect();
    if (err !== undefined) call.emit('error', toServiceError(err));
    else call.end();
  };
  const send = (msg: RegisterAndStreamWorkResponse) => {
    if (!closed && !call.cancelled) call.write(msg);
  };

  call.on('data', (req: RegisterAndStreamWorkRequest__Output) => {
    if (closed) return;
    try {
      session = handleWorkMessage(opts.scheduler, session, req, send);
    } catch (err) {
      close(err);
    }
  });
  call.on('end', () => close());
  call.on('cancelled', () => {
    closed = true;
    session?.disconnect();
  });
}

/** Applies one RegisterAndStreamWork message; returns the (possibly new) session. */
function handleWorkMessage(
  scheduler: TaskScheduler,
  session: ExecutorSession | undefined,
  req: RegisterAndStreamWorkRequest__Output,
  send: (msg: RegisterAndStreamWorkResponse) => void,
): ExecutorSession {
  const registration = req.register_executor_request;
  if (session === undefined) {
    if (registration == null)
      throw invalidArgument('The first message must be a register_executor_request');
  }
  if (registration != null) {
    const node = registration.node;
    if (node == null || node.host === '')
      throw invalidArgument('register_executor_request.node.host must not be empty');
    if (session === undefined) return scheduler.connectExecutor(node, send);
    session.update(node);
    return session;
  }
  const s = session!;
  if (req.enqueue_task_reservation_response != null) {
    s.acked(req.enqueue_task_reservation_response.task_id);
  } else if (req.shutting_down_request != null) {
    s.shuttingDown(req.shutting_down_request.task_id);
  } else if (req.ask_for_more_work_request != null) {
    const delayMs = s.askForMoreWork();
    if (delayMs !== undefined) send({ ask_for_more_work_response: { delay: durationOf(delayMs) } });
  } else {
    throw invalidArgument('RegisterAndStreamWorkRequest has no field set');
  }
  return s;
}

type LeaseCall = grpc.ServerDuplexStream<LeaseTaskRequest__Output, LeaseTaskResponse>;

function leaseTask(opts: SchedulerServiceOptions, call: LeaseCall): void {
  const lease = opts.scheduler.openLease();
  const leaseSeconds = opts.scheduler.leaseDurationSeconds();
  let taskId: string | undefined;
  let closed = false;
  const close = (err?: unknown) => {
    if (closed) return;
    closed = true;
    lease.streamEnded(err === undefined ? 'LeaseTask stream ended' : messageOf(err));
    if (err !== undefined) call.emit('error', toServiceError(err));
    else call.end();
  };

  call.on('data', (req: LeaseTaskRequest__Output) => {
    if (closed) return;
    try {
      // The first message claims the task.
      if (taskId === undefined) {
        const claimed = lease.claim(req.task_id, req.reconnect_token, (err) => close(err));
        taskId = req.task_id;
        call.write({
          serialized_task: claimed.serializedTask,
          lease_duration_seconds: leaseSeconds,
          lease_id: claimed.leaseId,
          reconnect_token: claimed.leaseId,
          supports_reconnect: true,
        });
        return;
      }
      if (req.task_id !== taskId)
        throw invalidArgument(
          `LeaseTaskRequest.task_id "${req.task_id}" differs from this stream's "${taskId}"`,
        );

      // Then keep-alives, until finalize or re-enqueue closes the lease.
      if (req.finalize) lease.finalize();
      else if (req.re_enqueue || req.release) lease.reEnqueue(reEnqueueReason(req));
      else {
        lease.keepAlive();
        call.write({ lease_duration_seconds: leaseSeconds });
        return;
      }
      call.write({ closed_cleanly: true });
      close();
    } catch (err) {
      close(err);
    }
  });
  call.on('end', () => close());
  call.on('cancelled', () => {
    closed = true;
    lease.streamEnded('LeaseTask stream cancelled');
  });
}

function reEnqueueReason(req: LeaseTaskRequest__Output): string {
  const reason = req.re_enqueue_reason;
  if (reason == null || (reason.code === 0 && reason.message === ''))
    return 'Executor re-enqueued the task';
  return `${Code[reason.code] ?? reason.code}: ${reason.message}`;
}

/** Validates a ScheduleTaskRequest as BuildBuddy does (FAILED_PRECONDITION). */
function checkScheduleTask(req: ScheduleTaskRequest__Output): NewTask {
  if (req.task_id === '') throw failedPrecondition('ScheduleTaskRequest.task_id is empty');
  if (req.metadata == null) throw failedPrecondition('ScheduleTaskRequest.metadata is missing');
  if (req.metadata.task_size == null)
    throw failedPrecondition('ScheduleTaskRequest.metadata.task_size is missing');
  if (req.serialized_task.length === 0)
    throw failedPrecondition('ScheduleTaskRequest.serialized_task is empty');
  return {
    id: req.task_id,
    serializedTask: Buffer.from(req.serialized_task),
    metadata: req.metadata,
    size: req.metadata.task_size,
  };
}
