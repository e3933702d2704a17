import type { BlobDigest } from '../digest.js';
import { packAny, type Operation, type Status } from '../proto/index.js';

/** What the Execution service remembers about one execution. */
export interface Execution {
  /** The execution ID: task ID and Operation name. */
  readonly id: string;
  readonly actionDigest: BlobDigest;
  /** False when the Action is do_not_cache: its result never enters the AC. */
  readonly cacheable: boolean;
  /** In-flight identical Executes share this execution when set. */
  readonly mergeKey?: string;
  /**
   * Cancelled when its last watcher leaves and none re-attaches within the
   * abandon grace (set for Execute; not for tasks from ScheduleTask, whose
   * owner does not watch them).
   */
  readonly cancelWhenAbandoned?: boolean;
  /** The latest Operation, sent at once to anyone who attaches. */
  operation: Operation;
  done: boolean;
}

/** The fields a new execution starts with. */
export type ExecutionInit = Pick<
  Execution,
  'id' | 'actionDigest' | 'cacheable' | 'mergeKey' | 'cancelWhenAbandoned'
>;

/**
 * The executions the server knows: running ones, and completed ones for a
 * retention period so that WaitExecution after completion still answers.
 * Watchers get every Operation published for an execution, in order; an
 * execution that completes notifies and drops its watchers.
 *
 * An execution marked cancelWhenAbandoned whose last watcher stops watching
 * before it completes is abandoned once no watcher has attached for the
 * abandon grace period: the onAbandoned listener then decides its fate
 * (normally, to cancel it).
 */
export interface ExecutionStore {
  /** Registers a new execution whose first Operation is QUEUED. */
  create(init: ExecutionInit): Execution;
  get(id: string): Execution | undefined;
  /** A running execution with this merge key, if any. */
  findRunning(mergeKey: string): Execution | undefined;
  /**
   * Sends the current Operation to `watcher` now, then every later one.
   * Returns the function that stops watching.
   */
  watch(id: string, watcher: (op: Operation) => void): () => void;
  /** Records and forwards an Operation; `op.done` completes the execution. */
  publish(id: string, op: Operation): void;
  /** Completes the execution with an error status and no ActionResult. */
  fail(id: string, status: Status): void;
  /** Sets the one listener told of abandoned executions (still running, unwatched). */
  onAbandoned(listener: (execution: Execution) => void): void;
  /** Executions not yet done. */
  runningCount(): number;
  /** Stops the retention timer and the abandon timers. */
  close(): void;
}

const TYPE_METADATA = 'build.bazel.remote.execution.v2.ExecuteOperationMetadata';
const TYPE_RESPONSE = 'build.bazel.remote.execution.v2.ExecuteResponse';

/** A done Operation carrying only an error status, as an execution that failed to run. */
export function failedOperation(name: string, actionDigest: BlobDigest, status: Status): Operation {
  return {
    name,
    done: true,
    metadata: packAny(TYPE_METADATA, { stage: 'COMPLETED', action_digest: actionDigest }),
    response: packAny(TYPE_RESPONSE, { status }),
  };
}

export function queuedOperation(name: string, actionDigest: BlobDigest): Operation {
  return {
    name,
    done: false,
    metadata: packAny(TYPE_METADATA, { stage: 'QUEUED', action_digest: actionDigest }),
  };
}

export interface ExecutionStoreOptions {
  /** How long completed executions are remembered (default 10 min). */
  retentionMs?: number;
  /** How long an unwatched execution waits for a watcher (default 10 s). */
  abandonGraceMs?: number;
}

/** Default grace before an execution nobody watches is abandoned. */
export const DEFAULT_ABANDON_GRACE_MS = 10_000;

/** Creates an empty store; close() stops its timers. */
export function createExecutionStore(opts: ExecutionStoreOptions = {}): ExecutionStore {
  return new MemoryExecutionStore(
    opts.retentionMs ?? 10 * 60_000,
    opts.abandonGraceMs ?? DEFAULT_ABANDON_GRACE_MS,
  );
}

interface Entry {
  execution: Execution;
  watchers: Set<(op: Operation) => void>;
  doneAt?: number;
  /** Running while the execution has no watcher and may be abandoned. */
  abandonTimer?: NodeJS.Timeout;
}

class MemoryExecutionStore implements ExecutionStore {
  private readonly entries = new Map<string, Entry>();
  private readonly running = new Map<string, Entry>();
  private readonly timer: NodeJS.Timeout;
  private abandoned: (execution: Execution) => void = () => {};

  constructor(
    private readonly retentionMs: number,
    private readonly abandonGraceMs: number,
  ) {
    this.timer = setInterval(() => this.forgetOld(), Math.min(retentionMs, 60_000));
    this.timer.unref();
  }

  create(init: ExecutionInit) {
    const execution: Execution = {
      ...init,
      operation: queuedOperation(init.id, init.actionDigest),
      done: false,
    };
    const entry: Entry = { execution, watchers: new Set() };
    this.entries.set(init.id, entry);
    if (init.mergeKey !== undefined) this.running.set(init.mergeKey, entry);
    return execution;
  }

  get(id: string): Execution | undefined {
    return this.entries.get(id)?.execution;
  }

  findRunning(mergeKey: string): Execution | undefined {
    return this.running.get(mergeKey)?.execution;
  }

  watch(id: string, watcher: (op: Operation) => void): () => void {
    const entry = this.entries.get(id);
    if (entry === undefined) return () => {};
    watcher(entry.execution.operation);
    if (entry.execution.done) return () => {};
    const token = (op: Operation) => watcher(op);
    entry.watchers.add(token);
    this.stopAbandonTimer(entry);
    return () => {
      if (entry.watchers.delete(token) && entry.watchers.size === 0) this.startAbandonTimer(entry);
    };
  }

  publish(id: string, op: Operation): void {
    const entry = this.entries.get(id);
    if (entry === undefined || entry.execution.done) return;
    entry.execution.operation = { ...op, name: id };
    if (op.done) this.complete(entry);
    for (const watcher of [...entry.watchers]) watcher(entry.execution.operation);
    if (op.done) entry.watchers.clear();
  }

  fail(id: string, status: Status): void {
    const execution = this.entries.get(id)?.execution;
    if (execution !== undefined)
      this.publish(id, failedOperation(id, execution.actionDigest, status));
  }

  onAbandoned(listener: (execution: Execution) => void): void {
    this.abandoned = listener;
  }

  runningCount(): number {
    let n = 0;
    for (const entry of this.entries.values()) if (!entry.execution.done) n++;
    return n;
  }

  close(): void {
    clearInterval(this.timer);
    for (const entry of this.entries.values()) this.stopAbandonTimer(entry);
  }

  private startAbandonTimer(entry: Entry): void {
    if (entry.execution.done || !entry.execution.cancelWhenAbandoned) return;
    this.stopAbandonTimer(entry);
    entry.abandonTimer = setTimeout(() => {
      entry.abandonTimer = undefined;
      if (!entry.execution.done && entry.watchers.size === 0) this.abandoned(entry.execution);
    }, this.abandonGraceMs);
    entry.abandonTimer.unref();
  }

  private stopAbandonTimer(entry: Entry): void {
    clearTimeout(entry.abandonTimer);
    entry.abandonTimer = undefined;
  }

  private complete(entry: Entry): void {
    this.stopAbandonTimer(entry);
    entry.execution.done = true;
    entry.doneAt = Date.now();
    const key = entry.execution.mergeKey;
    if (key !== undefined && this.running.get(key) === entry) this.running.delete(key);
  }

  private forgetOld(): void {
    const cutoff = Date.now() - this.retentionMs;
    for (const [id, entry] of this.entries)
      if (entry.doneAt !== undefined && entry.doneAt < cutoff) this.entries.delete(id);
  }
}
