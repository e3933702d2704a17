import { Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { Resources } from '../executor/task-queue.js';
import { BYTES_BUCKETS, COUNT_BUCKETS, USEC_BUCKETS } from './metrics.js';

/** BuildBuddy's group ID for tasks without one (unauthenticated). */
export const ANONYMOUS_GROUP = 'ANON';

/** The task stages of `buildbuddy_remote_execution_tasks_executing`. */
export type ExecutingStage =
  'init' | 'check_cache' | 'pull_image' | 'input_fetch' | 'execution' | 'output_upload';

/** The stages of `buildbuddy_remote_execution_executed_action_metadata_durations_usec`. */
export type DurationStage =
  'queued' | 'worker_queued' | 'input_fetch' | 'execution' | 'output_upload' | 'worker';

/**
 * What the executor exposes at scrape time. The gauges read it in their
 * collect callbacks, so nothing has to be pushed when the queue or the file
 * cache changes.
 */
export interface ExecutorGaugeSource {
  /** Reservations waiting in the local queue. */
  queueLength(): number;
  /** CPU and memory reserved by admitted tasks. */
  assigned(): Resources;
  /** CPU and memory the executor may hand out. */
  assignable(): Resources;
  /** File cache lookups so far; undefined without a file cache. */
  fileCache(): { hits: number; misses: number } | undefined;
}

/**
 * One executor's Prometheus metrics, on their own registry. The task
 * metrics decorator (executor/task-metrics.ts) records the task counters
 * and histograms; the executor records attempt outcomes and calls
 * observe() once with its gauge source.
 */
export interface ExecutorMetrics {
  readonly registry: Registry;
  /**
   * Counts a leased task in `buildbuddy_remote_execution_tasks_started_count`
   * and `buildbuddy_executor_tasks_started_total`.
   */
  readonly tasksStarted: { inc(): void };
  /** `buildbuddy_executor_tasks_completed_total{outcome}`, outcome as AttemptOutcome. */
  readonly tasksCompleted: Counter<'outcome'>;
  /** `buildbuddy_remote_execution_count{exit_code,status,isolation}`: actions whose Command ran. */
  readonly executions: Counter<'exit_code' | 'status' | 'isolation'>;
  readonly tasksExecuting: Gauge<'stage'>;
  readonly stageDurationsUsec: Histogram<'stage' | 'group_id'>;
  readonly taskDurationSeconds: Histogram;
  readonly fileDownload: FileTransferHistograms;
  readonly fileUpload: FileTransferHistograms;
  /** Makes the gauges read `source` from now on. */
  observe(source: ExecutorGaugeSource): void;
}

export interface FileTransferHistograms {
  count: Histogram;
  sizeBytes: Histogram;
  durationUsec: Histogram;
}

/** Creates the metrics on `registry` (default: a new one). */
export function createExecutorMetrics(registry = new Registry()): ExecutorMetrics {
  let source: ExecutorGaugeSource | undefined;
  const registers = [registry];
  const executing = new Gauge({
    name: 'buildbuddy_remote_execution_tasks_executing',
    help: 'Tasks running on this executor, by stage.',
    labelNames: ['stage'],
    registers,
  });
  const stages: ExecutingStage[] = [
    'init',
    'check_cache',
    'input_fetch',
    'execution',
    'output_upload',
  ];
  for (const stage of stages) executing.set({ stage }, 0);
  registerGauges(registry, () => source);
  return {
    registry,
    tasksStarted: bothCounters(
      counter(registry, 'buildbuddy_remote_execution_tasks_started_count', 'Tasks started.'),
      counter(registry, 'buildbuddy_executor_tasks_started_total', 'Tasks started.'),
    ),
    tasksCompleted: new Counter({
      name: 'buildbuddy_executor_tasks_completed_total',
      help: 'Task attempts finished: completed (result published), failed (error published), re-enqueued, or cancelled (withdrawn by the scheduler).',
      labelNames: ['outcome'],
      registers,
    }),
    executions: new Counter({
      name: 'buildbuddy_remote_execution_count',
      help: 'Actions whose Command ran, by exit code, status and isolation type.',
      labelNames: ['exit_code', 'status', 'isolation'],
      registers,
    }),
    tasksExecuting: executing,
    stageDurationsUsec: new Histogram({
      name: 'buildbuddy_remote_execution_executed_action_metadata_durations_usec',
      help: 'Durations of the stages of executed actions, in microseconds.',
      labelNames: ['stage', 'group_id'],
      buckets: USEC_BUCKETS,
      registers,
    }),
    taskDurationSeconds: new Histogram({
      name: 'buildbuddy_executor_task_duration_seconds',
      help: 'Time from lease to result of each task, in seconds.',
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600],
      registers,
    }),
    fileDownload: fileTransfer(registry, 'download'),
    fileUpload: fileTransfer(registry, 'upload'),
    observe: (s) => void (source = s),
  };
}

function bothCounters(a: Counter, b: Counter): { inc(): void } {
  return {
    inc: () => {
      a.inc();
      b.inc();
    },
  };
}

function counter(registry: Registry, name: string, help: string): Counter {
  return new Counter({ name, help, registers: [registry] });
}

function fileTransfer(registry: Registry, kind: 'download' | 'upload'): FileTransferHistograms {
  const prefix = `buildbuddy_remote_execution_file_${kind}`;
  const registers = [registry];
  return {
    count: new Histogram({
      name: `${prefix}_count`,
      help: `Files ${kind}ed per task.`,
      buckets: COUNT_BUCKETS,
      registers,
    }),
    sizeBytes: new Histogram({
      name: `${prefix}_size_bytes`,
      help: `Bytes ${kind}ed per task.`,
      buckets: BYTES_BUCKETS,
      registers,
    }),
    durationUsec: new Histogram({
      name: `${prefix}_duration_usec`,
      help: `Time spent on ${kind}s per task, in microseconds.`,
      buckets: USEC_BUCKETS,
      registers,
    }),
  };
}

/** The gauges and counters read from the executor at scrape time. */
function registerGauges(registry: Registry, source: () => ExecutorGaugeSource | undefined) {
  const registers = [registry];
  const resource = (name: string, help: string, read: (s: ExecutorGaugeSource) => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        const s = source();
        this.set(s ? read(s) : 0);
      },
    });
  new Gauge({
    name: 'buildbuddy_remote_execution_queue_length',
    help: 'Reservations waiting in the local queue.',
    labelNames: ['group_id'],
    registers,
    // Limitation: the local queue does not count per task group, so every
    // queued reservation is reported under group_id="ANON".
    collect() {
      this.set({ group_id: ANONYMOUS_GROUP }, source()?.queueLength() ?? 0);
    },
  });
  resource(
    'buildbuddy_remote_execution_assigned_ram_bytes',
    'Memory reserved by running tasks, in bytes.',
    (s) => s.assigned().memoryBytes,
  );
  resource(
    'buildbuddy_remote_execution_assigned_milli_cpu',
    'CPU reserved by running tasks, in milliCPU.',
    (s) => s.assigned().milliCpu,
  );
  resource(
    'buildbuddy_remote_execution_assignable_ram_bytes',
    'Memory this executor may assign to tasks, in bytes.',
    (s) => s.assignable().memoryBytes,
  );
  resource(
    'buildbuddy_remote_execution_assignable_milli_cpu',
    'CPU this executor may assign to tasks, in milliCPU.',
    (s) => s.assignable().milliCpu,
  );
  new Counter({
    name: 'buildbuddy_remote_execution_file_cache_requests',
    help: 'File cache lookups, by status (hit or miss).',
    labelNames: ['status'],
    registers,
    collect() {
      const stats = source()?.fileCache() ?? { hits: 0, misses: 0 };
      this.reset();
      this.inc({ status: 'hit' }, stats.hits);
      this.inc({ status: 'miss' }, stats.misses);
    },
  });
}
