import { mkdir } from 'node:fs/promises';

import { removeStaleWorkspaces } from './workspace.js';
import { lockDirectory, releasing, type DirectoryLock } from '../dir-lock.js';

import type * as grpc from '@grpc/grpc-js';
import type { Registry } from 'prom-client';

import { createCasClients } from '../cas/client.js';
import type { Config } from '../config.js';
import { invalidArgument, messageOf, unavailable } from '../errors.js';
import { createFileCache, type FileCache } from '../filecache.js';
import type { Identity } from '../identity.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';
import { createExecutorMetrics, type ExecutorMetrics } from '../monitoring/executor-metrics.js';
import { grpcPackage, type ExecutionClient, type SchedulerClient } from '../proto/index.js';
import { createNoneRunner } from '../runner/none.js';
import type { Runner } from '../runner/runner.js';
import { runAttempt, type AttemptDeps, type AttemptOutcome } from './attempt.js';
import { connectToScheduler, executionNode, type SchedulerConnection } from './scheduler-client.js';
import { clientSettings, createClient, parseTarget } from './target.js';
import { createTaskExecutor, type TaskExecutor } from './task.js';
import { withCacheCheck } from './task-cache-check.js';
import { withLogging } from './task-logging.js';
import { withExecutedActionMetadata } from './task-metadata.js';
import { withMetrics } from './task-metrics.js';
import { createTaskQueue, type Resources, type TaskClaim, type TaskQueue } from './task-queue.js';

/** A running executor. */
export interface Executor {
  /**
   * Stops taking work: tells the scheduler which reservations are still
   * queued (they go to other executors), lets running tasks finish for up to
   * `graceMs` (default 10 s), then aborts the rest, which are re-enqueued,
   * and closes every connection.
   */
  stop(opts?: { graceMs?: number }): Promise<void>;
  snapshot(): ExecutorSnapshot;
  /**
   * This executor's Prometheus metrics (tasks, stages, queue, assigned
   * resources, file cache); monitoring/ serves them on /metrics.
   */
  readonly metrics: Registry;
}

export interface ExecutorSnapshot {
  /** The registration stream to the scheduler is up. */
  connected: boolean;
  /** Reservations waiting in the local queue. */
  queueLength: number;
  /** Tasks running now. */
  active: number;
  /** Tasks whose result was published with status OK. */
  completed: number;
  /** Tasks whose result was published with an error status. */
  failed: number;
}

export interface ExecutorOptions {
  config: Config;
  identity: Identity;
  /** Runners by preference (default: the `none` runner). */
  runners?: Runner[];
  logger?: Logger;
}

/**
 * The executor's composition root: the file cache, the CAS clients (to
 * cache_target, else app_target), the scheduler connection and the local
 * queue, and the task pipeline with its decorators. Reservations run as
 * soon as the queue admits them, so concurrency is bounded by the task
 * sizes against the assignable CPU and memory.
 */
export async function startExecutor(opts: ExecutorOptions): Promise<Executor> {
  const e = opts.config.executor;
  const logger = opts.logger ?? silentLogger;
  const runners = opts.runners ?? [createNoneRunner({ logger })];
  checkIsolationSettings(opts.config);
  const isolation = e.default_isolation_type;
  if (isolation && !runners.some((r) => r.isolation === isolation))
    throw invalidArgument(
      `executor.default_isolation_type is "${isolation}", but this executor only runs ` +
        `${runners.map((r) => `"${r.isolation}"`).join(', ')}: change or remove the setting`,
    );

  // Local state: the build root (without workspaces a killed executor left
  // behind) and the file cache.
  await mkdir(e.root_directory, { recursive: true });
  const locks = [await lockDirectory(e.root_directory, 'build root (executor.root_directory)')];
  if (!e.disable_local_cache) {
    await mkdir(e.local_cache_directory, { recursive: true });
    const what = 'file cache (executor.local_cache_directory)';
    locks.push(await lockDirectory(e.local_cache_directory, what).catch(releasing(locks)));
  }
  await removeStaleWorkspaces(e.root_directory, logger);
  const cache = e.disable_local_cache
    ? undefined
    : await createFileCache({
        directory: e.local_cache_directory,
        maxSizeBytes: e.local_cache_size_bytes,
        logger,
      });

  // Clients: scheduler and Execution on app_target, the CAS on cache_target.
  const appTarget = parseTarget(e.app_target);
  const cacheTarget = e.cache_target ? parseTarget(e.cache_target) : appTarget;
  const cacheSettings = clientSettings(cacheTarget);
  const clients = {
    scheduler: createClient<SchedulerClient>(grpcPackage().scheduler.Scheduler, appTarget),
    execution: createClient<ExecutionClient>(
      grpcPackage().build.bazel.remote.execution.v2.Execution,
      appTarget,
    ),
    cas: createCasClients(
      cacheTarget.address,
      cacheSettings.credentials,
      cacheSettings.options as grpc.ChannelOptions,
    ),
  };

  return new RunningExecutor(opts, runners, cache, clients, logger, locks);
}

/** Builds the decorated task pipeline. */
function taskPipeline(
  opts: ExecutorOptions,
  runners: Runner[],
  metrics: ExecutorMetrics,
  cache?: FileCache,
): TaskExecutor {
  const e = opts.config.executor;
  let executor = createTaskExecutor({ config: e, runners, cache });
  executor = withExecutedActionMetadata(executor, opts.identity);
  if (e.check_action_result_before_execution) executor = withCacheCheck(executor);
  executor = withMetrics(executor, metrics);
  return withLogging(executor);
}

class RunningExecutor implements Executor {
  private readonly queue: TaskQueue;
  private readonly connection: SchedulerConnection;
  private readonly deps: AttemptDeps;
  private readonly stopController = new AbortController();
  private readonly running = new Set<Promise<void>>();
  private readonly claims = new Set<TaskClaim>();
  private readonly executorMetrics = createExecutorMetrics();
  private readonly counts = { completed: 0, failed: 0 };
  private readonly logger: Logger;
  private stopping = false;
  private draining = false;

  constructor(
    opts: ExecutorOptions,
    runners: Runner[],
    cache: FileCache | undefined,
    private readonly clients: Pick<AttemptDeps, 'scheduler' | 'execution' | 'cas'>,
    logger: Logger,
    private readonly locks: DirectoryLock[],
  ) {
    const e = opts.config.executor;
    const { identity } = opts;
    this.logger = moduleLogger(logger, 'executor');
    this.deps = {
      config: e,
      identity,
      ...clients,
      executor: taskPipeline(opts, runners, this.executorMetrics, cache),
      stopSignal: this.stopController.signal,
      logger: moduleLogger(logger, 'task'),
    };

    // The local queue, admitting reservations by task size.
    this.queue = createTaskQueue({
      capacity: {
        milliCpu: identity.assignableMilliCpu,
        memoryBytes: identity.assignableMemoryBytes,
      },
      taskExists: (r) => this.connection.taskExists(r.request.task_id, r.request.jwt),
      trimIntervalMs: e.queue_trim_interval,
      excessCapacityThreshold: e.excess_capacity_threshold,
      exclusive: e.exclusive_task_scheduling,
      logger: this.logger,
    });
    this.queue.onRunnable(() => this.drain());

    // Register with the scheduler and take reservations into the queue.
    const supportedIsolationTypes = runners.map((r) => r.isolation);
    this.connection = connectToScheduler({
      client: clients.scheduler,
      apiKey: e.api_key,
      node: () =>
        executionNode(identity, {
          supportedIsolationTypes,
          queueLength: this.queue.length(),
          activeCount: this.queue.active(),
        }),
      onReservation: (request) => void this.queue.enqueue(request),
      onCancel: (taskId) => void this.queue.cancel(taskId),
      idleForMs: () => (this.stopping ? 0 : this.queue.idleForMs()),
      logger: moduleLogger(logger, 'scheduler'),
    });

    // Gauges read at scrape time.
    this.executorMetrics.observe({
      queueLength: () => this.queue.length(),
      assigned: () => sumSizes([...this.claims]),
      assignable: () => ({
        milliCpu: identity.assignableMilliCpu,
        memoryBytes: identity.assignableMemoryBytes,
      }),
      fileCache: () => cache?.stats(),
    });
  }

  get metrics(): Registry {
    return this.executorMetrics.registry;
  }

  snapshot(): ExecutorSnapshot {
    return {
      connected: this.connection.connected(),
      queueLength: this.queue.length(),
      active: this.queue.active(),
      ...this.counts,
    };
  }

  async stop(opts: { graceMs?: number } = {}): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;

    // Hand queued reservations back and stop dequeuing.
    const queued = this.queue.close();
    await this.connection.shutdown(queued);

    // Let running tasks finish within the grace period, then abort them.
    const allDone = Promise.all([...this.running]);
    const graceMs = opts.graceMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'timeout'>((r) => (timer = setTimeout(r, graceMs, 'timeout')));
    if ((await Promise.race([allDone, graceOver])) === 'timeout') {
      this.logger.warn({ active: this.running.size }, 'Aborting running tasks to stop');
      this.stopController.abort(unavailable('The executor is shutting down'));
      await allDone;
    }
    clearTimeout(timer);

    // Close the connections and free the directories.
    this.clients.scheduler.close();
    this.clients.execution.close();
    this.clients.cas.close();
    await Promise.all(this.locks.map((l) => l.release()));
  }

  /** Starts every reservation the queue admits now. */
  private drain(): void {
    if (this.draining) return;
    this.draining = true;
    try {
      for (let claim = this.queue.take(); claim; claim = this.queue.take()) this.start(claim);
    } finally {
      this.draining = false;
    }
  }

  private start(claim: TaskClaim): void {
    this.claims.add(claim);
    const attempt = runAttempt(claim.reservation, this.deps)
      .then((outcome) => this.count(outcome))
      .catch((err) => this.logger.error({ err: messageOf(err) }, 'Task attempt crashed'))
      .finally(() => {
        this.running.delete(attempt);
        this.claims.delete(claim);
        claim.release();
      });
    this.running.add(attempt);
  }

  private count(outcome: AttemptOutcome): void {
    if (outcome === 'completed') this.counts.completed++;
    else if (outcome === 'failed') this.counts.failed++;
    if (outcome !== 'dropped') this.executorMetrics.tasksCompleted.inc({ outcome });
  }
}

/**
 * Settings that enable isolation types this version cannot provide are a
 * startup error rather than a silent fallback to running actions unisolated.
 */
export function checkIsolationSettings(config: Config): void {
  const e = config.executor;
  const unsupported = [
    e.enable_sandbox && 'executor.enable_sandbox',
    e.docker_socket && 'executor.docker_socket',
    e.enable_podman && 'executor.enable_podman',
  ].filter((key): key is string => Boolean(key));
  if (unsupported.length > 0) {
    throw invalidArgument(
      `${unsupported.join(', ')}: this version of Idlebuild runs actions only with the ` +
        '"none" isolation type; remove the setting',
    );
  }
}

function sumSizes(claims: TaskClaim[]): Resources {
  const sum = { milliCpu: 0, memoryBytes: 0 };
  for (const { reservation } of claims) {
    sum.milliCpu += reservation.size.milliCpu;
    sum.memoryBytes += reservation.size.memoryBytes;
  }
  return sum;
}
