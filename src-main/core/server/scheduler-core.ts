import { Code, GrpcError, notFound, invalidArgument } from '../errors.js';
import type { Logger } from '../log.js';
import type {
  Duration,
  ExecutionNode__Output,
  RegisterAndStreamWorkResponse,
  SchedulingMetadata,
  TaskSize,
} from '../proto/index.js';
import {
  nodeFitsTask,
  nodeLoad,
  nodePoolKey,
  samePool,
  taskPoolKey,
} from './scheduler-executors.js';
import {
  createTaskStore,
  type NewTask,
  type ReleaseOutcome,
  type StoredTask,
  type TaskStore,
} from './task-store.js';

/**
 * The embedded server's scheduler: BuildBuddy's reservation protocol without
 * the cluster. Tasks are reserved on up to three fitting executors, the first
 * executor to lease a task runs it, lost leases are re-enqueued, and a task
 * that fails five attempts fails its execution. The gRPC layer
 * (scheduler-service.ts) maps streams onto the sessions below; the Execution
 * service calls schedule() and markCompleted().
 *
 * Limitation: tasks live in memory only; a server restart forgets queued and
 * running tasks, and their clients see the Execute stream break.
 */
export interface TaskScheduler {
  /** Stores a task and reserves it on fitting executors (or keeps it queued). */
  schedule(task: NewTask): void;
  /**
   * Why no connected executor could ever run a task with this metadata and
   * size (UNAVAILABLE when none is registered in its pool, RESOURCE_EXHAUSTED
   * when none is big enough), or undefined when one could.
   */
  unschedulable(metadata: SchedulingMetadata, size: TaskSize): GrpcError | undefined;
  taskExists(id: string): boolean;
  /** The execution finished: the task needs no further attempt. */
  markCompleted(id: string): void;
  /**
   * The execution was cancelled: forgets the task, as BuildBuddy deletes a
   * cancelled invocation's tasks. Executors holding a reservation that
   * registered with supports_proactive_cancellation are sent
   * cancel_task_reservation_request; any other claim attempt fails with
   * NOT_FOUND, and so does the next keep-alive of an executor running it,
   * which makes that executor abort the run. Returns whether the task was
   * 'queued' or 'claimed', or undefined when it was not stored.
   */
  cancel(id: string): 'queued' | 'claimed' | undefined;
  /** Tasks stored and not claimed by any executor. */
  queueLength(): number;
  /**
   * The lease duration announced to executors, in whole seconds (at least 1;
   * a shorter configured lease still expires on its own schedule).
   */
  leaseDurationSeconds(): number;
  /** A newly registered executor; `send` writes to its work stream. */
  connectExecutor(
    node: ExecutionNode__Output,
    send: (msg: RegisterAndStreamWorkResponse) => void,
  ): ExecutorSession;
  /** The state of one LeaseTask stream. */
  openLease(): LeaseSession;
  /** ReEnqueueTask: ignored unless `leaseId` is the task's current lease. */
  reEnqueue(taskId: string, leaseId: string, reason: string): void;
  /** Stops the lease expiry timer. */
  close(): void;
}

/** One executor's RegisterAndStreamWork stream, from registration to its end. */
export interface ExecutorSession {
  /** A heartbeat: refresh the node and offer it waiting tasks. */
  update(node: ExecutionNode__Output): void;
  acked(taskId: string): void;
  /** The executor is leaving: re-enqueue its queued reservations elsewhere. */
  shuttingDown(taskIds: string[]): void;
  /** Sends up to 20 fitting tasks; returns the back-off delay (ms) when there are none. */
  askForMoreWork(): number | undefined;
  disconnect(): void;
}

/** One LeaseTask stream: claim, keep-alives, then finalize or re-enqueue. */
export interface LeaseSession {
  /** Claims the task; `onLost` ends the stream when the lease expires. */
  claim(
    taskId: string,
    reconnectToken: string,
    onLost: (err: Error) => void,
  ): { serializedTask: Buffer; leaseId: string };
  keepAlive(): void;
  finalize(): void;
  reEnqueue(reason: string): void;
  /** The stream ended or broke: a task still claimed is released for reconnect. */
  streamEnded(reason: string): void;
}

export interface TaskSchedulerOptions {
  logger: Logger;
  /**
   * Called when a task fails for good: attempts exhausted, or its lease
   * finalized before markCompleted (no result was published).
   */
  onTaskFailed: (taskId: string, message: string) => void;
  leaseDurationMs?: number;
  leaseGraceMs?: number;
  reconnectGraceMs?: number;
  now?: () => number;
}

/** BuildBuddy's constants (reference §7). */
export const PROBES_PER_TASK = 3;
export const MAX_TASK_ATTEMPTS = 5;
const MAX_TASKS_PER_ASK = 20;
const DEFAULT_LEASE_MS = 10_000;
const DEFAULT_RECONNECT_GRACE_MS = 1_000;
const ASK_DELAY_MIN_MS = 5_000;
const ASK_DELAY_MAX_MS = 60_000;
/** A reservation not leased for this long may be sent to the same executor again. */
const HELD_RESERVATION_TTL_MS = 30_000;

/** Creates the scheduler and starts its lease expiry timer (stop with close()). */
export function createTaskScheduler(opts: TaskSchedulerOptions): TaskScheduler {
  return new Scheduler(opts);
}

interface Executor {
  node: ExecutionNode__Output;
  send: (msg: RegisterAndStreamWorkResponse) => void;
  /** Task ID → time we sent the reservation. */
  held: Map<string, number>;
  lastWorkAt: number;
  leaving: boolean;
}

class Scheduler implements TaskScheduler {
  private readonly store: TaskStore;
  private readonly executors = new Set<Executor>();
  private readonly lostCallbacks = new Map<symbol, (err: Error) => void>();
  private readonly timer: NodeJS.Timeout;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly leaseMs: number;

  constructor(private readonly opts: TaskSchedulerOptions) {
    this.log = opts.logger;
    this.now = opts.now ?? Date.now;
    this.leaseMs = opts.leaseDurationMs ?? DEFAULT_LEASE_MS;
    const graceMs = opts.leaseGraceMs ?? DEFAULT_LEASE_MS;
    this.store = createTaskStore({
      leaseDurationMs: this.leaseMs,
      leaseGraceMs: graceMs,
      reconnectGraceMs: opts.reconnectGraceMs ?? DEFAULT_RECONNECT_GRACE_MS,
      maxAttempts: MAX_TASK_ATTEMPTS,
    });
    const sweepMs = Math.max(20, Math.min(this.leaseMs, graceMs) / 2);
    this.timer = setInterval(() => this.expireLeases(), sweepMs);
    this.timer.unref();
  }

  schedule(task: NewTask): void {
    this.store.add(task);
    const sent = this.reserve(this.store.get(task.id)!, PROBES_PER_TASK);
    this.log.debug({ task_id: task.id, reservations: sent }, 'Task scheduled');
  }

  unschedulable(metadata: SchedulingMetadata, size: TaskSize): GrpcError | undefined {
    const key = taskPoolKey(metadata);
    const inPool = [...this.executors].filter(
      (e) => !e.leaving && samePool(nodePoolKey(e.node), key),
    );
    const where = `pool "${key.pool || 'default'}" with os "${key.os}" and arch "${key.arch}"`;
    if (inPool.length === 0) {
      return new GrpcError(
        Code.UNAVAILABLE,
        `No registered executors in ${where}: start an executor with that pool, OS and ` +
          "architecture (idlebuild executor), or change the action's platform properties",
      );
    }
    if (!inPool.some((e) => nodeFitsTask(e.node, size))) {
      return new GrpcError(
        Code.RESOURCE_EXHAUSTED,
        `No executor in ${where} can fit a task needing ${size.estimated_milli_cpu ?? 0} ` +
          `milli-CPU and ${size.estimated_memory_bytes ?? 0} bytes of memory: lower the ` +
          'EstimatedCPU/EstimatedMemory platform properties or raise executor.millicpu/memory_bytes',
      );
    }
    return undefined;
  }

  taskExists(id: string): boolean {
    return this.store.get(id) !== undefined;
  }

  markCompleted(id: string): void {
    this.store.markCompleted(id);
    if (!this.taskExists(id)) this.forgetReservations(id);
  }

  cancel(id: string): 'queued' | 'claimed' | undefined {
    const task = this.store.get(id);
    if (task === undefined) return undefined;
    this.store.delete(id);
    if (task.lease !== undefined) this.lostCallbacks.delete(task.lease.holder);
    for (const executor of this.executors) {
      if (!executor.held.delete(id)) continue;
      if (executor.node.supports_proactive_cancellation)
        executor.send({ cancel_task_reservation_request: { task_id: id } });
    }
    const state = task.lease === undefined ? 'queued' : 'claimed';
    this.log.debug({ task_id: id, state }, 'Task cancelled');
    return state;
  }

  queueLength(): number {
    return this.store.unclaimed().length;
  }

  connectExecutor(
    node: ExecutionNode__Output,
    send: (msg: RegisterAndStreamWorkResponse) => void,
  ): ExecutorSession {
    const executor: Executor = {
      node,
      send,
      held: new Map(),
      lastWorkAt: this.now(),
      leaving: false,
    };
    this.executors.add(executor);
    this.log.info(executorFields(node), 'Executor registered');
    this.offerWaitingTasks(executor);
    return {
      update: (next) => {
        executor.node = next;
        this.offerWaitingTasks(executor);
      },
      acked: (taskId) => this.log.debug({ task_id: taskId }, 'Reservation acknowledged'),
      shuttingDown: (taskIds) => this.executorLeaving(executor, taskIds),
      askForMoreWork: () => this.askForMoreWork(executor),
      disconnect: () => {
        if (!this.executors.delete(executor)) return;
        this.log.info(executorFields(executor.node), 'Executor disconnected');
      },
    };
  }

  openLease(): LeaseSession {
    return new Lease(this);
  }

  reEnqueue(taskId: string, leaseId: string, reason: string): void {
    const outcome = this.store.release(taskId, { leaseId }, reason, false, this.now());
    this.afterRelease(taskId, outcome, reason);
  }

  close(): void {
    clearInterval(this.timer);
  }

  // ---------------------------------------------------------------- leases

  claim(holder: symbol, taskId: string, token: string, onLost: (err: Error) => void): StoredTask {
    const previous = this.store.get(taskId)?.lease?.holder;
    const task = this.store.claim(taskId, holder, token, this.now());
    if (previous !== undefined) this.lostCallbacks.delete(previous);
    this.lostCallbacks.set(holder, onLost);
    this.forgetReservations(taskId);
    this.log.debug({ task_id: taskId }, 'Task claimed');
    return task;
  }

  keepAlive(holder: symbol, taskId: string): void {
    this.store.keepAlive(taskId, holder, this.now());
  }

  finalize(holder: symbol, taskId: string): void {
    this.lostCallbacks.delete(holder);
    const published = this.store.get(taskId)?.completed ?? false;
    if (!this.store.finalize(taskId, holder)) return;
    this.log.debug({ task_id: taskId }, 'Task finalized');

    // Executors publish the result before they finalize; without one, the
    // execution would wait forever for a task that no longer exists.
    if (!published) {
      const message = `Task "${taskId}" was finalized by its executor without publishing a result`;
      this.log.warn({ task_id: taskId }, 'Task finalized without a published result');
      this.opts.onTaskFailed(taskId, message);
    }
  }

  release(holder: symbol, taskId: string, reason: string, reconnect: boolean): void {
    this.lostCallbacks.delete(holder);
    const outcome = this.store.release(taskId, holder, reason, reconnect, this.now());
    this.afterRelease(taskId, outcome, reason);
  }

  leaseDurationSeconds(): number {
    return Math.max(1, Math.round(this.leaseMs / 1000));
  }

  private expireLeases(): void {
    for (const { id, holder } of this.store.expired(this.now())) {
      const onLost = this.lostCallbacks.get(holder);
      this.release(holder, id, 'Lease expired: no keep-alive from the executor', true);
      onLost?.(notFound(`Lease on task "${id}" expired`));
    }
  }

  private afterRelease(taskId: string, outcome: ReleaseOutcome, reason: string): void {
    if (outcome.kind === 'stale') return;
    this.forgetReservations(taskId);
    if (outcome.kind === 'failed') {
      this.log.info({ task_id: taskId, reason }, 'Task failed: attempts exhausted');
      this.opts.onTaskFailed(taskId, outcome.message);
    } else if (outcome.kind === 'requeued') {
      const sent = this.reserve(this.store.get(taskId)!, PROBES_PER_TASK);
      this.log.info({ task_id: taskId, reason, reservations: sent }, 'Task re-enqueued');
    }
  }

  // ---------------------------------------------------------------- reservations

  /** Sends reservations for `task` to up to `count` fitting executors; returns how many. */
  private reserve(task: StoredTask, count: number, exclude?: Executor): number {
    const now = this.now();
    const candidates = [...this.executors]
      .filter((e) => e !== exclude && this.canOffer(e, task, now))
      .map((e) => ({ e, load: nodeLoad(e.node, e.held.size), tie: Math.random() }))
      .sort((a, b) => a.load - b.load || a.tie - b.tie)
      .slice(0, count);
    for (const { e } of candidates) this.sendReservation(e, task, now);
    return candidates.length;
  }

  /** Registration and heartbeat: offer tasks still short of reservations. */
  private offerWaitingTasks(executor: Executor): void {
    const now = this.now();
    for (const task of this.store.unclaimed()) {
      if (!this.canOffer(executor, task, now)) continue;
      if (this.holders(task.id, now) >= PROBES_PER_TASK) continue;
      this.sendReservation(executor, task, now);
    }
  }

  private askForMoreWork(executor: Executor): number | undefined {
    const now = this.now();
    const tasks = this.store
      .unclaimed()
      .filter((t) => this.canOffer(executor, t, now))
      .slice(0, MAX_TASKS_PER_ASK);
    for (const task of tasks) this.sendReservation(executor, task, now);
    if (tasks.length > 0) return undefined;
    const sinceWork = now - executor.lastWorkAt;
    return Math.min(ASK_DELAY_MAX_MS, Math.max(ASK_DELAY_MIN_MS, 2 * sinceWork));
  }

  private executorLeaving(executor: Executor, taskIds: string[]): void {
    executor.leaving = true;
    this.log.info({ ...executorFields(executor.node), queued: taskIds.length }, 'Executor leaving');
    for (const id of taskIds) {
      executor.held.delete(id);
      const task = this.store.get(id);
      if (task !== undefined && task.lease === undefined) this.reserve(task, 1, executor);
    }
  }

  private canOffer(executor: Executor, task: StoredTask, now: number): boolean {
    if (executor.leaving || task.completed) return false;
    const sentAt = executor.held.get(task.id);
    if (sentAt !== undefined && now - sentAt < HELD_RESERVATION_TTL_MS) return false;
    if (!samePool(nodePoolKey(executor.node), taskPoolKey(task.metadata))) return false;
    return nodeFitsTask(executor.node, task.size);
  }

  private holders(taskId: string, now: number): number {
    let n = 0;
    for (const e of this.executors) {
      const sentAt = e.held.get(taskId);
      if (sentAt !== undefined && now - sentAt < HELD_RESERVATION_TTL_MS) n++;
    }
    return n;
  }

  private forgetReservations(taskId: string): void {
    for (const e of this.executors) e.held.delete(taskId);
  }

  private sendReservation(executor: Executor, task: StoredTask, now: number): void {
    const delayMs = task.reconnect ? Math.max(0, task.reconnect.until - now) : 0;
    executor.held.set(task.id, now);
    executor.lastWorkAt = now;
    executor.send({
      enqueue_task_reservation_request: {
        task_id: task.id,
        task_size: task.size,
        scheduling_metadata: task.metadata,
        jwt: '',
        delay: durationOf(delayMs),
      },
    });
    this.log.debug(
      { task_id: task.id, executor_id: executor.node.executor_id, delay_ms: delayMs },
      'Reservation sent',
    );
  }
}

/** LeaseTask stream state: which task this stream holds, if any. */
class Lease implements LeaseSession {
  private readonly holder = Symbol('lease');
  private taskId: string | undefined;
  private done = false;

  constructor(private readonly scheduler: Scheduler) {}

  claim(taskId: string, reconnectToken: string, onLost: (err: Error) => void) {
    if (!taskId) throw invalidArgument('LeaseTaskRequest.task_id is empty');
    const task = this.scheduler.claim(this.holder, taskId, reconnectToken, (err) => {
      this.done = true;
      onLost(err);
    });
    this.taskId = taskId;
    return { serializedTask: task.serializedTask, leaseId: task.lease!.leaseId };
  }

  keepAlive(): void {
    this.scheduler.keepAlive(this.holder, this.claimed());
  }

  finalize(): void {
    this.scheduler.finalize(this.holder, this.claimed());
    this.done = true;
  }

  reEnqueue(reason: string): void {
    this.scheduler.release(
      this.holder,
      this.claimed(),
      reason || 'Executor re-enqueued the task',
      false,
    );
    this.done = true;
  }

  streamEnded(reason: string): void {
    if (this.taskId === undefined || this.done) return;
    this.done = true;
    this.scheduler.release(this.holder, this.taskId, reason, true);
  }

  private claimed(): string {
    if (this.taskId === undefined || this.done) throw notFound('No task is leased on this stream');
    return this.taskId;
  }
}

export function durationOf(ms: number): Duration {
  return { seconds: Math.floor(ms / 1000), nanos: Math.round((ms % 1000) * 1e6) };
}

function executorFields(node: ExecutionNode__Output) {
  return {
    executor_id: node.executor_id,
    host: node.host,
    pool: node.pool,
    os: node.os_family,
    arch: node.arch,
  };
}
