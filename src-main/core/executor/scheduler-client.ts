import * as grpc from '@grpc/grpc-js';

import { codeOf, messageOf } from '../errors.js';
import type { Identity } from '../identity.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type {
  EnqueueTaskReservationRequest__Output,
  ExecutionNode,
  RegisterAndStreamWorkRequest,
  RegisterAndStreamWorkResponse__Output,
  SchedulerClient,
} from '../proto/index.js';
import { durationMs } from './proto-time.js';
import { connectionHint } from './target.js';

/**
 * The executor's registration with the scheduler
 * (`scheduler.Scheduler/RegisterAndStreamWork`): one bidi stream, opened
 * with the API key, that carries the ExecutionNode at once and as a
 * heartbeat, delivers reservations (each acknowledged at once, duplicates
 * too), asks for more work while the executor is idle, and carries the
 * shutdown notice. Any stream error closes it and it is re-opened after a
 * backoff (1 s, doubling up to 30 s, with jitter) until shutdown().
 */
export interface SchedulerConnection {
  /** True while the registration stream is up. */
  connected(): boolean;
  /** Re-sends the registration now, e.g. after the capacity changed. */
  register(): void;
  /** Asks the scheduler whether a task still exists, with the reservation's JWT. */
  taskExists(taskId: string, jwt: string): Promise<boolean>;
  /**
   * Sends ShuttingDownRequest with the reservations still queued here (the
   * scheduler hands them to other executors), closes the stream and stops
   * reconnecting.
   */
  shutdown(queuedTaskIds: string[]): Promise<void>;
}

export interface SchedulerConnectionOptions {
  client: SchedulerClient;
  /** `executor.api_key`; sent as `x-buildbuddy-api-key` on this stream only, when set. */
  apiKey?: string;
  /** The ExecutionNode to register, computed afresh for each heartbeat. */
  node: () => ExecutionNode;
  /** Receives each reservation; a throw tears the stream down. Acks are sent here. */
  onReservation: (request: EnqueueTaskReservationRequest__Output) => void;
  /** A reservation the scheduler withdrew (proactive cancellation). */
  onCancel?: (taskId: string) => void;
  /** How long the executor has had excess capacity; enables asking for more work. */
  idleForMs?: () => number;
  /** Heartbeat period; BuildBuddy's 5 s check-in interval. */
  heartbeatMs?: number;
  /** Period of the ask-for-more-work check, and the idle time it needs (5 s). */
  askForWorkMs?: number;
  /** First reconnect delay (1 s); it doubles on each failure up to reconnectMaxMs (30 s). */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  logger?: Logger;
}

type WorkStream = grpc.ClientDuplexStream<
  RegisterAndStreamWorkRequest,
  RegisterAndStreamWorkResponse__Output
>;

/** A stream that stayed up this long resets the reconnect backoff. */
const BACKOFF_RESET_MS = 10_000;
const TASK_EXISTS_TIMEOUT_MS = 10_000;
const SHUTDOWN_CLOSE_TIMEOUT_MS = 2_000;
/** How long a registration stream must stay open to count as registered. */
const REGISTRATION_SETTLE_MS = 200;

/** Opens the registration stream; it stays open (reconnecting) until shutdown(). */
export function connectToScheduler(opts: SchedulerConnectionOptions): SchedulerConnection {
  return new RegistrationStream(opts);
}

/** The ExecutionNode for an Identity, as the Go executor fills it in. */
export function executionNode(
  identity: Identity,
  state: {
    supportedIsolationTypes: string[];
    queueLength: number;
    activeCount: number;
    assignableMilliCpu?: number;
    assignableMemoryBytes?: number;
  },
): ExecutionNode {
  return {
    host: identity.hostname,
    port: 1,
    assignable_memory_bytes: state.assignableMemoryBytes ?? identity.assignableMemoryBytes,
    assignable_milli_cpu: state.assignableMilliCpu ?? identity.assignableMilliCpu,
    os_family: identity.osFamily,
    arch: identity.arch,
    pool: identity.pool.toLowerCase(),
    version: identity.version,
    executor_id: identity.executorId,
    executor_host_id: identity.hostId,
    supported_isolation_types: state.supportedIsolationTypes,
    current_queue_length: state.queueLength,
    active_action_count: state.activeCount,
    os_display_name: identity.osDisplayName,
    supports_proactive_cancellation: true,
  };
}

class RegistrationStream implements SchedulerConnection {
  private stream: WorkStream | undefined;
  private up = false;
  private stopped = false;
  private failures = 0;
  private openedAt = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private upTimer: NodeJS.Timeout | undefined;
  private askTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private readonly logger: Logger;
  private readonly heartbeatMs: number;
  private readonly askForWorkMs: number;

  constructor(private readonly opts: SchedulerConnectionOptions) {
    this.logger = opts.logger ?? silentLogger;
    this.heartbeatMs = opts.heartbeatMs ?? 5_000;
    this.askForWorkMs = opts.askForWorkMs ?? 5_000;
    this.open();
  }

  connected(): boolean {
    return this.up;
  }

  register(): void {
    this.send({ register_executor_request: { node: this.opts.node() } });
  }

  taskExists(taskId: string, jwt: string): Promise<boolean> {
    const metadata = new grpc.Metadata();
    if (jwt) metadata.set('x-buildbuddy-jwt', jwt);
    const deadline = Date.now() + TASK_EXISTS_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      this.opts.client.TaskExists({ task_id: taskId }, metadata, { deadline }, (err, res) =>
        err ? reject(err) : resolve(res?.exists ?? false),
      );
    });
  }

  async shutdown(queuedTaskIds: string[]): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    this.stopTimers();
    const stream = this.stream;
    if (stream === undefined) return;
    this.send({ shutting_down_request: { task_id: queuedTaskIds } });
    stream.end();
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(done, SHUTDOWN_CLOSE_TIMEOUT_MS);
      stream.once('status', done);
      stream.once('error', done);
    });
    stream.cancel();
    this.up = false;
  }

  /** Opens the stream, registers at once and starts the heartbeat. */
  private open(): void {
    const metadata = new grpc.Metadata();
    if (this.opts.apiKey) metadata.set('x-buildbuddy-api-key', this.opts.apiKey);
    const stream = this.opts.client.RegisterAndStreamWork(metadata);
    this.stream = stream;
    this.openedAt = Date.now();
    stream.on('data', (res: RegisterAndStreamWorkResponse__Output) => this.onResponse(stream, res));
    stream.on('error', (err) => this.onStreamEnd(stream, err));
    stream.on('status', (status: grpc.StatusObject) => this.onStreamEnd(stream, status));

    // The scheduler never answers a registration, so the stream counts as up
    // once it has stayed open briefly after the first one (a refused
    // connection or a rejected API key ends it well within that time), or as
    // soon as the scheduler sends anything.
    const request = { register_executor_request: { node: this.opts.node() } };
    stream.write(request, (err?: Error) => {
      if (err) return;
      clearTimeout(this.upTimer);
      this.upTimer = setTimeout(() => this.markUp(stream), REGISTRATION_SETTLE_MS);
    });
    this.heartbeat = setInterval(() => this.register(), this.heartbeatMs);
    this.armAsk(this.askForWorkMs);
  }

  private onResponse(stream: WorkStream, res: RegisterAndStreamWorkResponse__Output): void {
    if (stream !== this.stream) return;
    this.markUp(stream);
    try {
      if (res.enqueue_task_reservation_request) {
        const request = res.enqueue_task_reservation_request;
        this.opts.onReservation(request);
        this.send({ enqueue_task_reservation_response: { task_id: request.task_id } });
        this.armAsk(this.askForWorkMs);
      } else if (res.ask_for_more_work_response) {
        const delay = durationMs(res.ask_for_more_work_response.delay);
        this.armAsk(delay > 0 ? delay : this.askForWorkMs);
      } else if (res.cancel_task_reservation_request) {
        this.opts.onCancel?.(res.cancel_task_reservation_request.task_id);
      } else {
        throw new Error('Received a RegisterAndStreamWorkResponse with no known field set');
      }
    } catch (err) {
      this.logger.warn(
        { err: messageOf(err) },
        'Failed to handle a scheduler message; reconnecting',
      );
      stream.cancel();
    }
  }

  private onStreamEnd(stream: WorkStream, cause: unknown): void {
    if (stream !== this.stream) return;
    this.stream = undefined;
    this.up = false;
    this.stopTimers();
    stream.cancel();
    if (this.stopped) return;
    if (Date.now() - this.openedAt >= BACKOFF_RESET_MS) this.failures = 0;
    const delay = this.backoffMs();
    this.failures++;
    const err = messageOf((cause as { details?: string }).details ?? cause);
    const hint = connectionHint(err);
    this.logger.warn(
      { code: codeOf(cause), err, ...(hint ? { hint } : {}) },
      `Registration stream closed; reconnecting in ${Math.round(delay)} ms` +
        (hint ? `: ${hint}` : ''),
    );
    this.reconnectTimer = setTimeout(() => this.open(), delay);
  }

  /** 1 s, then doubling up to the maximum, with ±20 % jitter after the first. */
  private backoffMs(): number {
    const min = this.opts.reconnectMinMs ?? 1_000;
    const max = this.opts.reconnectMaxMs ?? 30_000;
    if (this.failures === 0) return min;
    const base = Math.min(max, min * 2 ** this.failures);
    return Math.min(max, base * (0.8 + 0.4 * Math.random()));
  }

  /** Schedules the next ask-for-more-work check. */
  private armAsk(delayMs: number): void {
    if (!this.opts.idleForMs) return;
    clearTimeout(this.askTimer);
    this.askTimer = setTimeout(() => {
      if (this.opts.idleForMs!() >= this.askForWorkMs) this.send({ ask_for_more_work_request: {} });
      this.armAsk(this.askForWorkMs);
    }, delayMs);
  }

  private markUp(stream: WorkStream): void {
    if (stream !== this.stream || this.up) return;
    this.up = true;
    this.logger.info('Registered with the scheduler');
  }

  private send(request: RegisterAndStreamWorkRequest): void {
    this.stream?.write(request);
  }

  private stopTimers(): void {
    clearTimeout(this.upTimer);
    clearInterval(this.heartbeat);
    clearTimeout(this.askTimer);
  }
}
