import * as grpc from '@grpc/grpc-js';

import { Code, codeOf, GrpcError, internal, messageOf, unavailable, wrap } from '../errors.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import {
  decode,
  type ExecutionTask__Output,
  type LeaseTaskRequest,
  type LeaseTaskResponse__Output,
  type SchedulerClient,
} from '../proto/index.js';
import { readStream, type StreamReader } from './grpc-stream.js';

/**
 * The executor's claim on one task (`scheduler.Scheduler/LeaseTask`).
 *
 * leaseTask() claims the task and decodes its ExecutionTask; from then on
 * the lease keeps itself alive on the same stream. If a keep-alive fails
 * (the task was cancelled, or the scheduler is gone and reconnecting did not
 * help) `signal` is aborted so the run stops. close() ends the lease exactly
 * once: finalize when the task is done (or failed for good), re-enqueue when
 * another attempt should run it; if the scheduler does not confirm a clean
 * close, the task is re-enqueued with the unary ReEnqueueTask.
 */
export interface TaskLease {
  readonly task: ExecutionTask__Output;
  readonly leaseId: string;
  /** Aborted, with a GrpcError as reason, when the lease is lost. */
  readonly signal: AbortSignal;
  /**
   * True once the scheduler said the task no longer exists (NOT_FOUND on a
   * keep-alive): it was cancelled or completed elsewhere, so it must be
   * neither published nor re-enqueued.
   */
  readonly cancelled: boolean;
  /** Ends the lease: finalize without a reason, re-enqueue with one. */
  close(reEnqueueReason?: GrpcError): Promise<void>;
}

export interface LeaseOptions {
  client: SchedulerClient;
  taskId: string;
  /** The reservation's JWT, sent as `x-buildbuddy-jwt` when non-empty. */
  jwt: string;
  executorId: string;
  executorHostname: string;
  /** `executor.enable_lease_reconnect`: re-claim with the reconnect token after UNAVAILABLE/INTERNAL. */
  reconnect?: boolean;
  /** Gives up a claim still waiting for the scheduler (executor stopping). */
  signal?: AbortSignal;
  logger?: Logger;
}

/** Retry budget for re-opening a broken lease stream, as in BuildBuddy. */
const RECONNECT_BUDGET_MS = 1_000;
/** How long a claim waits for the scheduler's answer. */
const CLAIM_TIMEOUT_MS = 30_000;
/** How long close() waits for the scheduler to confirm. */
const CLOSE_TIMEOUT_MS = 10_000;
/**
 * Keep-alives go out at this fraction of the lease duration. BuildBuddy
 * waits the full duration and relies on the server's grace period; renewing
 * earlier costs one small message and keeps the lease on servers with
 * little or no grace.
 */
const RENEW_FRACTION = 0.8;

type LeaseStream = grpc.ClientDuplexStream<LeaseTaskRequest, LeaseTaskResponse__Output>;

/**
 * Claims a task. Resolves undefined when the scheduler says NOT_FOUND: the
 * task was claimed by another executor, finished or cancelled, the normal
 * fate of most reservations. A serialized task that does not decode is
 * finalized and reported as INTERNAL.
 */
export async function leaseTask(opts: LeaseOptions): Promise<TaskLease | undefined> {
  const logger = opts.logger ?? silentLogger;
  const channel = new LeaseChannel(opts);
  let first: LeaseTaskResponse__Output;
  const giveUp = () => channel.cancel();
  opts.signal?.addEventListener('abort', giveUp);
  try {
    if (opts.signal?.aborted) throw opts.signal.reason;
    first = await channel.claim('');
  } catch (err) {
    if (codeOf(err) !== Code.NOT_FOUND) throw wrap(err, `Failed to lease task "${opts.taskId}"`);
    logger.debug({ reason: messageOf(err) }, 'Task taken by someone else');
    return undefined;
  } finally {
    opts.signal?.removeEventListener('abort', giveUp);
  }
  const lease = new KeptLease(opts, channel, first, logger);
  let task: ExecutionTask__Output;
  try {
    task = decodeTask(first.serialized_task);
  } catch (err) {
    await lease.close();
    throw internal(
      `Failed to decode the task "${opts.taskId}" from the scheduler: ${messageOf(err)}`,
    );
  }
  lease.start(task);
  return lease;
}

function decodeTask(bytes: Buffer): ExecutionTask__Output {
  if (bytes.length === 0) throw new Error('serialized_task is empty');
  return decode('build.bazel.remote.execution.v2.ExecutionTask', bytes);
}

/** One LeaseTask stream at a time, replaced on reconnect. */
class LeaseChannel {
  private stream: LeaseStream | undefined;
  private reader: StreamReader<LeaseTaskResponse__Output> | undefined;

  constructor(private readonly opts: LeaseOptions) {}

  /** Opens a stream and claims the task, with a reconnect token after the first time. */
  async claim(reconnectToken: string): Promise<LeaseTaskResponse__Output> {
    this.cancel();
    const metadata = new grpc.Metadata();
    if (this.opts.jwt) metadata.set('x-buildbuddy-jwt', this.opts.jwt);
    this.stream = this.opts.client.LeaseTask(metadata);
    this.reader = readStream(this.stream);
    return this.exchange(this.request({ reconnect_token: reconnectToken }), CLAIM_TIMEOUT_MS);
  }

  /** Sends one request and returns its response (strictly one per request). */
  async exchange(request: LeaseTaskRequest, timeoutMs: number): Promise<LeaseTaskResponse__Output> {
    const stream = this.stream;
    if (!stream || !this.reader) throw unavailable('The lease stream is closed');
    stream.write(request);
    const response = await withTimeout(this.reader.next(), timeoutMs, () => stream.cancel());
    if (response === undefined) throw unavailable('The scheduler ended the lease stream');
    return response;
  }

  /** Half-closes after `request` and reads to the end; true when closed_cleanly. */
  async finish(request: LeaseTaskRequest): Promise<boolean> {
    const stream = this.stream;
    if (!stream || !this.reader) return false;
    stream.write(request);
    stream.end();
    let clean = false;
    const deadline = Date.now() + CLOSE_TIMEOUT_MS;
    for (;;) {
      const left = Math.max(1, deadline - Date.now());
      const response = await withTimeout(this.reader.next(), left, () => stream.cancel());
      if (response === undefined) return clean;
      clean = response.closed_cleanly;
    }
  }

  request(fields: LeaseTaskRequest): LeaseTaskRequest {
    return {
      task_id: this.opts.taskId,
      executor_id: this.opts.executorId,
      executor_hostname: this.opts.executorHostname,
      supports_reconnect: this.opts.reconnect ?? true,
      ...fields,
    };
  }

  cancel(): void {
    this.stream?.cancel();
    this.stream = undefined;
    this.reader = undefined;
  }
}

class KeptLease implements TaskLease {
  task!: ExecutionTask__Output;
  readonly leaseId: string;
  private readonly controller = new AbortController();
  private reconnectToken: string;
  private leaseDurationMs: number;
  private timer: NodeJS.Timeout | undefined;
  private pending: Promise<void> = Promise.resolve();
  private closed = false;
  cancelled = false;

  constructor(
    private readonly opts: LeaseOptions,
    private readonly channel: LeaseChannel,
    first: LeaseTaskResponse__Output,
    private readonly logger: Logger,
  ) {
    this.leaseId = first.lease_id;
    this.reconnectToken = first.reconnect_token || (first.supports_reconnect ? first.lease_id : '');
    this.leaseDurationMs = leaseDurationMs(first);
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  start(task: ExecutionTask__Output): void {
    this.task = task;
    this.scheduleKeepAlive();
  }

  async close(reEnqueueReason?: GrpcError): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    await this.pending;

    // Close on the lease stream, then fall back to ReEnqueueTask.
    const fields: LeaseTaskRequest = reEnqueueReason
      ? { re_enqueue: true, re_enqueue_reason: statusOf(reEnqueueReason) }
      : { finalize: true };
    const request = { task_id: this.opts.taskId, executor_id: this.opts.executorId, ...fields };
    const clean = this.signal.aborted
      ? false
      : await this.channel.finish(request).catch(() => false);
    this.channel.cancel();
    if (clean || this.cancelled) return;
    this.logger.warn('Lease did not close cleanly; re-enqueuing');
    await this.reEnqueue(reEnqueueReason ? messageOf(reEnqueueReason) : '').catch((err) =>
      this.logger.warn({ err: messageOf(err) }, 'ReEnqueueTask failed'),
    );
  }

  private scheduleKeepAlive(): void {
    if (this.closed) return;
    const delay = Math.max(1_000, this.leaseDurationMs) * RENEW_FRACTION;
    this.timer = setTimeout(() => {
      this.pending = this.keepAlive().then(
        () => this.scheduleKeepAlive(),
        (err) => this.lose(err),
      );
    }, delay);
  }

  /** One keep-alive; on UNAVAILABLE/INTERNAL re-claims on a new stream. */
  private async keepAlive(): Promise<void> {
    const request = this.channel.request({ reconnect_token: this.reconnectToken });
    try {
      this.update(await this.channel.exchange(request, Math.max(5_000, this.leaseDurationMs)));
    } catch (err) {
      if (this.closed) return;
      if (!(this.opts.reconnect ?? true) || !isReconnectable(err)) throw err;
      this.logger.debug({ err: messageOf(err) }, 'Reconnecting lease');
      this.update(await this.reconnect(err));
    }
  }

  private async reconnect(cause: unknown): Promise<LeaseTaskResponse__Output> {
    const deadline = Date.now() + RECONNECT_BUDGET_MS;
    let last = cause;
    for (let wait = 50; Date.now() < deadline; wait *= 2) {
      try {
        return await this.channel.claim(this.reconnectToken);
      } catch (err) {
        last = err;
        if (!isReconnectable(err)) break;
      }
      await new Promise((r) => setTimeout(r, Math.min(wait, Math.max(0, deadline - Date.now()))));
    }
    throw last;
  }

  private update(response: LeaseTaskResponse__Output): void {
    this.leaseDurationMs = leaseDurationMs(response) || this.leaseDurationMs;
    if (response.reconnect_token) this.reconnectToken = response.reconnect_token;
  }

  private lose(err: unknown): void {
    if (this.closed) return;
    this.channel.cancel();
    if (codeOf(err) === Code.NOT_FOUND) {
      this.cancelled = true;
      this.logger.info({ err: messageOf(err) }, 'Task cancelled by the scheduler; aborting it');
      this.controller.abort(
        new GrpcError(Code.CANCELLED, `Task "${this.opts.taskId}" was cancelled`),
      );
      return;
    }
    const reason = wrap(err, `Lost the lease on task "${this.opts.taskId}"`);
    this.logger.warn(
      { task_id: this.opts.taskId, err: reason.message },
      'Lease lost; aborting task',
    );
    this.controller.abort(reason);
  }

  private reEnqueue(reason: string): Promise<void> {
    const metadata = new grpc.Metadata();
    if (this.opts.jwt) metadata.set('x-buildbuddy-jwt', this.opts.jwt);
    const request = { task_id: this.opts.taskId, lease_id: this.leaseId, reason };
    return new Promise((resolve, reject) =>
      this.opts.client.ReEnqueueTask(
        request,
        metadata,
        { deadline: Date.now() + CLOSE_TIMEOUT_MS },
        (err) => (err ? reject(err) : resolve()),
      ),
    );
  }
}

function leaseDurationMs(response: LeaseTaskResponse__Output): number {
  return Number(response.lease_duration_seconds) * 1000;
}

function isReconnectable(err: unknown): boolean {
  const code = codeOf(err);
  return code === Code.UNAVAILABLE || code === Code.INTERNAL;
}

function statusOf(err: GrpcError) {
  return { code: err.code, message: err.message, details: err.details };
}

/** Races a promise against a timeout (≤ 0: none); onTimeout runs before the rejection. */
async function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => void): Promise<T> {
  if (ms <= 0) return promise;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(unavailable(`The scheduler did not answer within ${ms} ms`));
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
