import type * as grpc from '@grpc/grpc-js';

import type { BlobDigest } from '../digest.js';
import { Code, codeOf, messageOf, unavailable } from '../errors.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import {
  packAny,
  type ExecuteResponse,
  type ExecutionClient,
  type ExecutionStage,
  type ExecutionState__Output,
  type Operation,
} from '../proto/index.js';
import { toTimestamp } from './proto-time.js';

/**
 * Publishes one task's progress and result to the scheduler
 * (`Execution/PublishOperation`, a client stream of Operations named by the
 * execution ID). Progress goes out as stage CACHE_CHECK or EXECUTING with an
 * ExecutionProgress; complete() sends the done Operation with the
 * ExecuteResponse. While a task executes, the last progress is re-sent
 * periodically so the stream stays alive. A broken stream is re-opened
 * (within a 5 s budget) and the last Operation re-sent; close() fails with
 * UNAVAILABLE when the scheduler could not be reached, and the task is then
 * retried elsewhere.
 */
export interface OperationPublisher {
  publish(stage: ProgressStage, state?: ExecutionState__Output): Promise<void>;
  complete(response: ExecuteResponse): Promise<void>;
  /** Half-closes the stream and waits for the scheduler's response. */
  close(): Promise<void>;
}

/** The stages of a progress Operation; COMPLETED is complete()'s. */
export type ProgressStage = 'CACHE_CHECK' | 'QUEUED' | 'EXECUTING';

export interface PublisherOptions {
  client: ExecutionClient;
  /** ExecutionTask.execution_id, used verbatim as Operation.name. */
  executionId: string;
  actionDigest: BlobDigest;
  /** Task call metadata (see taskCallMetadata), plus the region header when set. */
  metadata: grpc.Metadata;
  /** `executor.task_progress_publish_interval` (60 s). */
  republishIntervalMs?: number;
  reconnectBudgetMs?: number;
  logger?: Logger;
}

/** Opens the PublishOperation stream for one task. */
export function openPublisher(opts: PublisherOptions): OperationPublisher {
  return new StreamPublisher(opts);
}

/** One PublishOperation call and the outcome of its unary response. */
interface PublishCall {
  stream: grpc.ClientWritableStream<Operation>;
  /** Resolves with the call's error, or null for an OK response. */
  finished: Promise<Error | null>;
  failed: boolean;
}

class StreamPublisher implements OperationPublisher {
  private call: PublishCall;
  private last: Operation | undefined;
  private republish: NodeJS.Timeout | undefined;
  private readonly logger: Logger;

  constructor(private readonly opts: PublisherOptions) {
    this.logger = opts.logger ?? silentLogger;
    this.call = this.open();
  }

  async publish(stage: ProgressStage, state?: ExecutionState__Output): Promise<void> {
    const progress = state
      ? [
          packAny('build.bazel.remote.execution.v2.ExecutionProgress', {
            timestamp: toTimestamp(new Date()),
            execution_state: state,
          }),
        ]
      : [];
    await this.send(this.operation(stage, { auxiliary_metadata: progress }, false));
    clearInterval(this.republish);
    if (stage === 'EXECUTING') {
      const every = this.opts.republishIntervalMs ?? 60_000;
      this.republish = setInterval(() => void this.resendLast(), every);
      this.republish.unref();
    }
  }

  async complete(response: ExecuteResponse): Promise<void> {
    clearInterval(this.republish);
    const operation = this.operation('COMPLETED', undefined, true);
    operation.response = packAny('build.bazel.remote.execution.v2.ExecuteResponse', response);
    await this.send(operation);
  }

  async close(): Promise<void> {
    clearInterval(this.republish);
    this.call.stream.end();
    const err = await this.call.finished;
    if (err === null) return;
    if (!isRetryable(err) || this.last === undefined)
      throw unavailable(`Failed to publish the operation: ${messageOf(err)}`);
    await this.retry(err, true);
  }

  private operation(stage: ExecutionStage, partial: object | undefined, done: boolean): Operation {
    const metadata = {
      stage,
      action_digest: this.opts.actionDigest,
      partial_execution_metadata: partial,
    };
    return {
      name: this.opts.executionId,
      done,
      metadata: packAny('build.bazel.remote.execution.v2.ExecuteOperationMetadata', metadata),
    };
  }

  /** Writes one Operation, re-opening a broken stream first. */
  private async send(operation: Operation): Promise<void> {
    this.last = operation;
    if (this.call.failed) return this.retry(unavailable('The publish stream broke'), false);
    try {
      await write(this.call, operation);
    } catch (err) {
      if (!isRetryable(err))
        throw unavailable(`Failed to publish the operation: ${messageOf(err)}`);
      await this.retry(err, false);
    }
  }

  private async resendLast(): Promise<void> {
    if (this.last === undefined) return;
    await this.send(this.last).catch((err) =>
      this.logger.warn({ err: messageOf(err) }, 'Failed to re-publish progress'),
    );
  }

  /**
   * Re-opens the stream and re-sends the last Operation until it is
   * accepted (and, when closing, acknowledged) or the budget runs out.
   */
  private async retry(cause: unknown, closing: boolean): Promise<void> {
    const deadline = Date.now() + (this.opts.reconnectBudgetMs ?? 5_000);
    let last = cause;
    for (let wait = 100; Date.now() < deadline; wait = Math.min(wait * 2, 1_000)) {
      this.logger.debug({ err: messageOf(last) }, 'Re-opening the publish stream');
      this.call = this.open();
      try {
        await write(this.call, this.last!);
        if (!closing) return;
        this.call.stream.end();
        const err = await this.call.finished;
        if (err === null) return;
        last = err;
      } catch (err) {
        last = err;
      }
      if (!isRetryable(last)) break;
      await new Promise((r) => setTimeout(r, Math.min(wait, Math.max(0, deadline - Date.now()))));
    }
    throw unavailable(`Failed to publish the operation: ${messageOf(last)}`);
  }

  private open(): PublishCall {
    let resolve!: (err: Error | null) => void;
    const finished = new Promise<Error | null>((r) => (resolve = r));
    const call: PublishCall = { finished, failed: false } as PublishCall;
    call.stream = this.opts.client.PublishOperation(this.opts.metadata, (err) => {
      if (err) call.failed = true;
      resolve(err ?? null);
    });
    return call;
  }
}

/** Writes a message; rejects if the call ends first (it failed, or the server ended it early). */
function write(call: PublishCall, operation: Operation): Promise<void> {
  return new Promise((resolve, reject) => {
    call.finished.then((err) =>
      reject(err ?? unavailable('The scheduler ended the publish stream')),
    );
    call.stream.write(operation, (err?: Error | null) => (err ? reject(err) : resolve()));
  });
}

/** UNAVAILABLE, INTERNAL and an early end (EOF) are worth a new stream. */
function isRetryable(err: unknown): boolean {
  const code = codeOf(err);
  return code === Code.UNAVAILABLE || code === Code.INTERNAL || code === Code.CANCELLED;
}
