import { randomBytes } from 'node:crypto';

import { Code, GrpcError, invalidArgument, notFound } from '../errors.js';
import type { SchedulingMetadata, TaskSize } from '../proto/index.js';

/** A task as the scheduler receives it: what to run and where it may run. */
export interface NewTask {
  /** The execution ID (also the Operation name). */
  id: string;
  /** A serialized build.bazel.remote.execution.v2.ExecutionTask. */
  serializedTask: Buffer;
  metadata: SchedulingMetadata;
  /** The effective task size, sent in every reservation. */
  size: TaskSize;
  /**
   * Platform property retry=false: a task the executor hands back fails at
   * once instead of being re-enqueued (a lost lease is still re-enqueued).
   */
  noRetry?: boolean;
}

/** A stored task with its attempt count and, while claimed, its lease. */
export interface StoredTask extends NewTask {
  attempts: number;
  lastFailure: string;
  lease?: Lease;
  /** Set after a lease was lost: the holder may re-claim it until `until`. */
  reconnect?: { token: string; until: number; attemptCounted: boolean };
  /** The execution already completed: a lost lease deletes instead of re-enqueuing. */
  completed: boolean;
}

/**
 * One claim on a task. `holder` identifies the LeaseTask stream that owns
 * it, so a stream that was replaced by a reconnect cannot release it.
 */
export interface Lease {
  leaseId: string;
  holder: symbol;
  lastCheckIn: number;
}

/** What became of a task whose lease was given up. */
export type ReleaseOutcome =
  | { kind: 'requeued' }
  | { kind: 'deleted' }
  | { kind: 'failed'; message: string }
  | { kind: 'stale' };

/**
 * The scheduler's task table: tasks waiting for an executor, the lease on
 * each claimed task, attempt counting and lease expiry. It holds no timers
 * and does no I/O; the caller passes the current time, which keeps every
 * transition synchronous (and so atomic with respect to other RPCs) and
 * testable.
 */
export interface TaskStore {
  /** Stores a new task, unclaimed. ALREADY_EXISTS when the ID is taken. */
  add(task: NewTask): void;
  get(id: string): StoredTask | undefined;
  delete(id: string): void;
  /** Tasks not claimed by anyone, oldest first. */
  unclaimed(): StoredTask[];
  /**
   * Claims a task for `holder`. A reconnect token equal to the current or
   * lost lease ID re-claims it (the same lease ID is kept). NOT_FOUND when
   * the task does not exist, is claimed by another lease, or is reserved for
   * another executor's reconnect.
   */
  claim(id: string, holder: symbol, reconnectToken: string, now: number): StoredTask;
  /** Records a keep-alive. NOT_FOUND when the task or the lease is gone. */
  keepAlive(id: string, holder: symbol, now: number): void;
  /** Deletes a task once its lease holder is done with it. */
  finalize(id: string, holder: symbol): boolean;
  /**
   * Gives up a claim, counting a failed attempt. With `reconnect` the
   * holder may re-claim it within `reconnectGraceMs` and the attempt is then
   * not counted. After `maxAttempts` failures the task is deleted.
   */
  release(
    id: string,
    holder: symbol | { leaseId: string },
    reason: string,
    reconnect: boolean,
    now: number,
  ): ReleaseOutcome;
  /** Leases whose last check-in is older than lease + grace. */
  expired(now: number): { id: string; holder: symbol }[];
  /** Marks the execution done; a later lost lease deletes the task. */
  markCompleted(id: string): void;
  size(): number;
}

export interface TaskStoreOptions {
  leaseDurationMs: number;
  leaseGraceMs: number;
  reconnectGraceMs: number;
  maxAttempts: number;
}

const LEASE_ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';

/** A 20-character random lease ID, as BuildBuddy's scheduler issues. */
export function newLeaseId(): string {
  const bytes = randomBytes(20);
  let id = '';
  for (const b of bytes) id += LEASE_ID_ALPHABET[b % LEASE_ID_ALPHABET.length];
  return id;
}

/** Creates an empty in-memory task table. */
export function createTaskStore(opts: TaskStoreOptions): TaskStore {
  return new MemoryTaskStore(opts);
}

class MemoryTaskStore implements TaskStore {
  private readonly tasks = new Map<string, StoredTask>();

  constructor(private readonly opts: TaskStoreOptions) {}

  add(task: NewTask): void {
    if (!task.id) throw invalidArgument('Task ID is empty');
    if (this.tasks.has(task.id))
      throw new GrpcError(Code.ALREADY_EXISTS, `Task "${task.id}" already exists`);
    this.tasks.set(task.id, { ...task, attempts: 0, lastFailure: '', completed: false });
  }

  get(id: string): StoredTask | undefined {
    return this.tasks.get(id);
  }

  delete(id: string): void {
    this.tasks.delete(id);
  }

  unclaimed(): StoredTask[] {
    return [...this.tasks.values()].filter((t) => t.lease === undefined && !t.completed);
  }

  claim(id: string, holder: symbol, reconnectToken: string, now: number): StoredTask {
    const task = this.tasks.get(id);
    if (task === undefined || task.completed) throw notFound(`Task "${id}" does not exist`);

    // A reconnecting holder takes over its own lease, even before the
    // server noticed that its old stream broke.
    if (task.lease !== undefined) {
      if (reconnectToken === '' || reconnectToken !== task.lease.leaseId)
        throw notFound(`Task "${id}" already claimed`);
      task.lease = { leaseId: task.lease.leaseId, holder, lastCheckIn: now };
      return task;
    }

    // Within the reconnect window only the previous holder may claim it.
    const reconnect = task.reconnect;
    task.reconnect = undefined;
    if (reconnect !== undefined && now < reconnect.until) {
      if (reconnectToken !== reconnect.token) {
        task.reconnect = reconnect;
        throw notFound(`Task "${id}" is waiting for another executor to reconnect`);
      }
      if (reconnect.attemptCounted) task.attempts--;
      task.lease = { leaseId: reconnect.token, holder, lastCheckIn: now };
      return task;
    }
    task.lease = { leaseId: newLeaseId(), holder, lastCheckIn: now };
    return task;
  }

  keepAlive(id: string, holder: symbol, now: number): void {
    const task = this.tasks.get(id);
    if (task === undefined) throw notFound(`Task "${id}" disappeared, possibly cancelled`);
    if (task.lease?.holder !== holder) throw notFound(`Lease on task "${id}" was lost`);
    task.lease.lastCheckIn = now;
  }

  finalize(id: string, holder: symbol): boolean {
    const task = this.tasks.get(id);
    if (task?.lease?.holder !== holder) return false;
    this.tasks.delete(id);
    return true;
  }

  release(
    id: string,
    holder: symbol | { leaseId: string },
    reason: string,
    reconnect: boolean,
    now: number,
  ): ReleaseOutcome {
    const task = this.tasks.get(id);
    const lease = task?.lease;
    if (task === undefined || lease === undefined) return { kind: 'stale' };
    const owns =
      typeof holder === 'symbol' ? lease.holder === holder : lease.leaseId === holder.leaseId;
    if (!owns) return { kind: 'stale' };
    task.lease = undefined;

    // A completed execution needs no further attempt.
    if (task.completed) {
      this.tasks.delete(id);
      return { kind: 'deleted' };
    }

    // Count the attempt; the last one fails the execution.
    task.attempts++;
    task.lastFailure = reason;
    if (task.attempts >= this.opts.maxAttempts) {
      this.tasks.delete(id);
      const message = `Task "${id}" already attempted ${task.attempts} times. Last failure: ${reason}`;
      return { kind: 'failed', message };
    }
    if (task.noRetry && !reconnect) {
      this.tasks.delete(id);
      const message = `Task "${id}" failed and its platform sets retry=false. Failure: ${reason}`;
      return { kind: 'failed', message };
    }
    if (reconnect) {
      const until = now + this.opts.reconnectGraceMs;
      task.reconnect = { token: lease.leaseId, until, attemptCounted: true };
    }
    return { kind: 'requeued' };
  }

  expired(now: number): { id: string; holder: symbol }[] {
    const deadline = this.opts.leaseDurationMs + this.opts.leaseGraceMs;
    const out: { id: string; holder: symbol }[] = [];
    for (const task of this.tasks.values()) {
      if (task.lease !== undefined && now - task.lease.lastCheckIn > deadline)
        out.push({ id: task.id, holder: task.lease.holder });
    }
    return out;
  }

  markCompleted(id: string): void {
    const task = this.tasks.get(id);
    if (task === undefined) return;
    if (task.lease === undefined) this.tasks.delete(id);
    else task.completed = true;
  }

  size(): number {
    return this.tasks.size;
  }
}
