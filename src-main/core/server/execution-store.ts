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
  /** The latest Operation, sent at once to anyone who attaches. */
  operation: Operation;
  done: boolean;
}

/**
 * The executions the server knows: running ones, and completed ones for a
 * retention period so that WaitExecution after completion still answers.
 * Watchers get every Operation published for an execution, in order; an
 * execution that completes notifies and drops its watchers.
 */
export interface ExecutionStore {
  /** Registers a new execution whose first Operation is QUEUED. */
  create(init: {
    id: string;
    actionDigest: BlobDigest;
    cacheable: boolean;
    mergeKey?: string;
  }): Execution;
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
  /** Executions not yet done. */
  runningCount(): number;
  /** Stops the retention timer. */
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

/** Creates an empty store that forgets completed executions after `retentionMs`. */
export function createExecutionStore(opts: { retentionMs?: number } = {}): ExecutionStore {
  return new MemoryExecutionStore(opts.retentionMs ?? 10 * 60_000);
}

interface Entry {
  execution: Execution;
  watchers: Set<(op: Operation) => void>;
  doneAt?: number;
}

class MemoryExecutionStore implements ExecutionStore {
  private readonly entries = new Map<string, Entry>();
  private readonly running = new Map<string, Entry>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly retentionMs: number) {
    this.timer = setInterval(() => this.forgetOld(), Math.min(retentionMs, 60_000));
    this.timer.unref();
  }

  create(init: { id: string; actionDigest: BlobDigest; cacheable: boolean; mergeKey?: string }) {
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
    entry.watchers.add(watcher);
    return () => entry.watchers.delete(watcher);
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

  runningCount(): number {
    let n = 0;
    for (const entry of this.entries.values()) if (!entry.execution.done) n++;
    return n;
  }

  close(): void {
    clearInterval(this.timer);
  }

  private complete(entry: Entry): void {
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
