import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { EnqueueTaskReservationRequest__Output } from '../proto/index.js';
import { durationMs } from './proto-time.js';

/** CPU and memory, as assignable by the executor or used by a task. */
export interface Resources {
  milliCpu: number;
  memoryBytes: number;
}

/** A reservation waiting in (or taken from) the local queue. */
export interface QueuedReservation {
  request: EnqueueTaskReservationRequest__Output;
  /** The task size used for admission (see createTaskQueue). */
  size: Resources;
  /** When the reservation became runnable, after its delay. */
  queuedAt: Date;
}

/** A reservation admitted to run; its resources stay reserved until release(). */
export interface TaskClaim {
  reservation: QueuedReservation;
  /** Frees the reserved resources; idempotent. */
  release(): void;
}

/**
 * The executor's local queue of reservations, as BuildBuddy's priority task
 * scheduler keeps it: one queue per `scheduling_metadata.task_group_id`,
 * served round-robin; within a group lower `priority` first and FIFO among
 * equals. A reservation with a `delay` becomes runnable only after it.
 *
 * Admission reserves the reservation's task size against free capacity
 * (assignable minus what running tasks reserved). The head of the current
 * group waits until it fits; one bigger than the whole capacity still runs
 * when nothing else does, so it is never stuck.
 */
export interface TaskQueue {
  /** Adds a reservation. False for a duplicate of one already queued or delayed. */
  enqueue(request: EnqueueTaskReservationRequest__Output): boolean;
  /** Removes a queued or delayed reservation; false when it is not waiting here. */
  cancel(taskId: string): boolean;
  /** The next reservation that can start now, with its resources reserved. */
  take(): TaskClaim | undefined;
  /** Calls `listener` whenever take() may have something new to return. */
  onRunnable(listener: () => void): void;
  /** Changes the assignable capacity (availability policy, settings). */
  setCapacity(capacity: Resources): void;
  /** IDs of the reservations waiting here, delayed ones included. */
  queuedTaskIds(): string[];
  length(): number;
  /** Number of taken claims not yet released. */
  active(): number;
  /**
   * How long (ms) the executor has continuously had excess capacity: less
   * than the threshold of CPU and memory reserved. 0 when it has none.
   */
  idleForMs(): number;
  /** Stops timers and refuses further work; returns the IDs still waiting. */
  close(): string[];
}

export interface TaskQueueOptions {
  capacity: Resources;
  /**
   * Queue trimming: asks whether a queued task still exists (TaskExists).
   * Reservations whose task is gone (finished elsewhere, cancelled) are
   * dropped from the head of the queue.
   */
  taskExists?: (reservation: QueuedReservation) => Promise<boolean>;
  /** Queue trimming period; BuildBuddy's `queue_trim_interval`, 15 s. ≤ 0 disables. */
  trimIntervalMs?: number;
  /** Fraction of capacity below which the executor asks for more work (0.40). */
  excessCapacityThreshold?: number;
  /** Runs one task at a time (`executor.exclusive_task_scheduling`). */
  exclusive?: boolean;
  logger?: Logger;
}

/**
 * Size used when a reservation carries no task size: the app's default
 * task size (600 milliCPU, 400 MB), so that unsized tasks cannot all start
 * at once.
 */
export const DEFAULT_TASK_SIZE: Resources = { milliCpu: 600, memoryBytes: 400_000_000 };

/** Creates an empty queue; close() it to stop its timers. */
export function createTaskQueue(opts: TaskQueueOptions): TaskQueue {
  return new PriorityTaskQueue(opts);
}

/** The task size admission uses: EnqueueTaskReservationRequest.task_size. */
export function reservationSize(request: EnqueueTaskReservationRequest__Output): Resources {
  const milliCpu = Number(request.task_size?.estimated_milli_cpu ?? 0);
  const memoryBytes = Number(request.task_size?.estimated_memory_bytes ?? 0);
  if (milliCpu <= 0 && memoryBytes <= 0) return { ...DEFAULT_TASK_SIZE };
  return { milliCpu: Math.max(0, milliCpu), memoryBytes: Math.max(0, memoryBytes) };
}

interface Entry {
  reservation: QueuedReservation;
  priority: number;
  seq: number;
}

class PriorityTaskQueue implements TaskQueue {
  private readonly groups = new Map<string, Entry[]>();
  private readonly delayed = new Map<string, NodeJS.Timeout>();
  private readonly listeners: (() => void)[] = [];
  private readonly logger: Logger;
  private capacity: Resources;
  private used: Resources = { milliCpu: 0, memoryBytes: 0 };
  private running = 0;
  private seq = 0;
  /** Index into the group order of the group served next. */
  private turn = 0;
  private excessSince: number | undefined = Date.now();
  private trimTimer: NodeJS.Timeout | undefined;
  private trimming = false;
  private closed = false;

  constructor(private readonly opts: TaskQueueOptions) {
    this.capacity = { ...opts.capacity };
    this.logger = opts.logger ?? silentLogger;
    const trimMs = opts.trimIntervalMs ?? 15_000;
    if (opts.taskExists && trimMs > 0) {
      this.trimTimer = setInterval(() => void this.trim(), trimMs);
      this.trimTimer.unref();
    }
  }

  enqueue(request: EnqueueTaskReservationRequest__Output): boolean {
    const taskId = request.task_id;
    if (this.closed || this.isWaiting(taskId)) return false;
    const delayMs = durationMs(request.delay);
    if (delayMs <= 0) {
      this.insert(request);
      return true;
    }
    const timer = setTimeout(() => {
      this.delayed.delete(taskId);
      this.insert(request);
    }, delayMs);
    timer.unref();
    this.delayed.set(taskId, timer);
    return true;
  }

  cancel(taskId: string): boolean {
    const timer = this.delayed.get(taskId);
    if (timer !== undefined) {
      clearTimeout(timer);
      this.delayed.delete(taskId);
      return true;
    }
    return this.remove(taskId);
  }

  take(): TaskClaim | undefined {
    if (this.closed) return undefined;
    const group = this.currentGroup();
    if (group === undefined) return undefined;
    const entries = this.groups.get(group)!;
    const head = entries[0];
    if (!this.fits(head.reservation.size)) return undefined;
    entries.shift();
    if (entries.length === 0) this.groups.delete(group);
    else this.turn++;
    return this.admit(head.reservation);
  }

  onRunnable(listener: () => void): void {
    this.listeners.push(listener);
  }

  setCapacity(capacity: Resources): void {
    this.capacity = { ...capacity };
    this.updateExcess();
    this.notify();
  }

  queuedTaskIds(): string[] {
    const queued = [...this.groups.values()].flat().map((e) => e.reservation.request.task_id);
    return [...queued, ...this.delayed.keys()];
  }

  length(): number {
    let n = this.delayed.size;
    for (const entries of this.groups.values()) n += entries.length;
    return n;
  }

  active(): number {
    return this.running;
  }

  idleForMs(): number {
    return this.excessSince === undefined ? 0 : Date.now() - this.excessSince;
  }

  close(): string[] {
    const ids = this.queuedTaskIds();
    this.closed = true;
    clearInterval(this.trimTimer);
    for (const timer of this.delayed.values()) clearTimeout(timer);
    this.delayed.clear();
    this.groups.clear();
    return ids;
  }

  private insert(request: EnqueueTaskReservationRequest__Output): void {
    const size = reservationSize(request);
    if (size.milliCpu > this.capacity.milliCpu || size.memoryBytes > this.capacity.memoryBytes)
      this.logger.warn(
        { taskId: request.task_id, size, capacity: this.capacity },
        'Task size exceeds the executor capacity; it will run alone',
      );
    const group = request.scheduling_metadata?.task_group_id ?? '';
    const entry: Entry = {
      reservation: { request, size, queuedAt: new Date() },
      priority: request.scheduling_metadata?.priority ?? 0,
      seq: this.seq++,
    };
    const entries = this.groups.get(group) ?? [];
    const at = entries.findIndex((e) => e.priority > entry.priority);
    entries.splice(at < 0 ? entries.length : at, 0, entry);
    this.groups.set(group, entries);
    this.notify();
  }

  private admit(reservation: QueuedReservation): TaskClaim {
    const { size } = reservation;
    this.used.milliCpu += size.milliCpu;
    this.used.memoryBytes += size.memoryBytes;
    this.running++;
    this.updateExcess();
    let released = false;
    return {
      reservation,
      release: () => {
        if (released) return;
        released = true;
        this.used.milliCpu -= size.milliCpu;
        this.used.memoryBytes -= size.memoryBytes;
        this.running--;
        this.updateExcess();
        this.notify();
      },
    };
  }

  private fits(size: Resources): boolean {
    if (this.running === 0) return true;
    if (this.opts.exclusive) return false;
    return (
      this.used.milliCpu + size.milliCpu <= this.capacity.milliCpu &&
      this.used.memoryBytes + size.memoryBytes <= this.capacity.memoryBytes
    );
  }

  private currentGroup(): string | undefined {
    const order = [...this.groups.keys()];
    if (order.length === 0) return undefined;
    this.turn %= order.length;
    return order[this.turn];
  }

  /** The reservation take() would consider next. */
  private head(): QueuedReservation | undefined {
    const group = this.currentGroup();
    return group === undefined ? undefined : this.groups.get(group)![0].reservation;
  }

  private isWaiting(taskId: string): boolean {
    if (this.delayed.has(taskId)) return true;
    for (const entries of this.groups.values())
      if (entries.some((e) => e.reservation.request.task_id === taskId)) return true;
    return false;
  }

  private remove(taskId: string): boolean {
    for (const [group, entries] of this.groups) {
      const at = entries.findIndex((e) => e.reservation.request.task_id === taskId);
      if (at < 0) continue;
      entries.splice(at, 1);
      if (entries.length === 0) this.groups.delete(group);
      this.notify();
      return true;
    }
    return false;
  }

  private async trim(): Promise<void> {
    if (this.trimming || this.closed) return;
    this.trimming = true;
    try {
      for (let head = this.head(); head !== undefined; head = this.head()) {
        if (await this.opts.taskExists!(head)) return;
        this.logger.debug(
          { taskId: head.request.task_id },
          'Dropped a reservation for a gone task',
        );
        this.remove(head.request.task_id);
      }
    } catch (err) {
      this.logger.debug({ err }, 'Queue trimming failed; will retry');
    } finally {
      this.trimming = false;
    }
  }

  private updateExcess(): void {
    const threshold = this.opts.excessCapacityThreshold ?? 0.4;
    const excess =
      this.used.milliCpu < threshold * this.capacity.milliCpu &&
      this.used.memoryBytes < threshold * this.capacity.memoryBytes;
    if (!excess) this.excessSince = undefined;
    else this.excessSince ??= Date.now();
  }

  private notify(): void {
    if (this.closed) return;
    for (const listener of this.listeners) listener();
  }
}
