import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';

import { missingDigestsOf, missingSubject } from '../cas/missing.js';
import type { ContentStore } from '../cas/types.js';
import type { ExecutorConfig } from '../config.js';
import { checkDigest, type BlobDigest } from '../digest.js';
import { Code, codeOf, GrpcError, invalidArgument, messageOf, unavailable } from '../errors.js';
import type { FileCache } from '../filecache.js';
import type { Logger } from '../log.js';
import {
  packAny,
  type ActionResult,
  type Command__Output,
  type ExecuteResponse,
  type ExecutionTask__Output,
  type IOStats,
  type UsageStats,
} from '../proto/index.js';
import type { RunResult, Runner } from '../runner/runner.js';
import { materializeInputRoot } from './input-tree.js';
import { createWorkspace, type Workspace } from './workspace.js';
import { checkOutputPaths, collectOutputs, createOutputParents } from './outputs.js';
import { durationProperty, PROPERTY } from './platform.js';
import { durationMs } from './proto-time.js';
import type { OperationPublisher } from './publisher.js';
import type { QueuedReservation } from './task-queue.js';

/**
 * One task on its way through the executor: what was leased, where to
 * publish, the task's view of the CAS, and what the decorators record about
 * it. Built per attempt by runAttempt().
 */
export interface TaskContext {
  task: ExecutionTask__Output;
  reservation: QueuedReservation;
  /** The action digest, from ExecuteRequest.action_digest. */
  actionDigest: BlobDigest;
  /** Platform properties, lower-cased names (see taskPlatform). */
  platform: Map<string, string>;
  publisher: OperationPublisher;
  /** The CAS and Action Cache with this task's credentials. */
  store: ContentStore;
  /** Aborted when the lease is lost or the executor stops. */
  signal: AbortSignal;
  /** Timestamps and statistics for ExecutedActionMetadata. */
  timeline: TaskTimeline;
  /** Work to do once the result is published (workspace removal). */
  cleanups: (() => Promise<void>)[];
  logger: Logger;
}

/** What happened when, filled in by the pipeline and its decorators. */
export interface TaskTimeline {
  workerStart?: Date;
  workerCompleted?: Date;
  inputFetchStart?: Date;
  inputFetchCompleted?: Date;
  executionStart?: Date;
  executionCompleted?: Date;
  outputUploadStart?: Date;
  outputUploadCompleted?: Date;
  isolationType?: string;
  timeoutMs?: number;
  ioStats: IOStats;
  usageStats?: UsageStats;
}

/**
 * The executor seam: runs one leased task to its ExecuteResponse. A Command
 * that runs is a result, whatever its exit code (a timeout is a result with
 * status DEADLINE_EXCEEDED and the partial outputs). Anything that keeps the
 * Command from running or its outputs from being stored throws a GrpcError.
 * Cross-cutting concerns (cache check, metadata, logging) are decorators
 * in task-*.ts.
 */
export interface TaskExecutor {
  execute(ctx: TaskContext): Promise<ExecuteResponse>;
}

export interface TaskExecutorOptions {
  config: ExecutorConfig;
  /** Runners by preference; the first is the default isolation type. */
  runners: Runner[];
  cache?: FileCache;
}

/** The core pipeline: validate, input root, run, outputs. */
export function createTaskExecutor(opts: TaskExecutorOptions): TaskExecutor {
  return new Pipeline(opts);
}

class Pipeline implements TaskExecutor {
  constructor(private readonly opts: TaskExecutorOptions) {}

  async execute(ctx: TaskContext): Promise<ExecuteResponse> {
    const { config } = this.opts;
    const { task, publisher, timeline } = ctx;

    // Validate the Action, Command and platform before touching the disk.
    const action = task.action;
    const command = task.command;
    if (!action || !command) throw invalidArgument('The task has no Action or Command');
    checkDigestFunction(task);
    const inputRootDigest = checkDigest(action.input_root_digest);
    checkCommand(command);
    const runner = this.selectRunner(ctx.platform);
    const timeoutMs = effectiveTimeout(durationMs(action.timeout), ctx.platform, config);
    const graceMs = terminationGrace(ctx.platform, config);
    timeline.isolationType = runner.isolation;
    timeline.timeoutMs = timeoutMs;

    // Create the workspace: the input root, and stdout/stderr beside it.
    const workspace = await createWorkspace(config.root_directory);
    ctx.cleanups.push(() => rm(workspace.root, { recursive: true, force: true }));
    const workingDir = join(workspace.inputRoot, ...splitPath(command.working_directory));

    // Download the input root, linking files from the file cache.
    await publisher.publish('EXECUTING', 'DOWNLOADING_INPUTS');
    timeline.inputFetchStart = new Date();
    const inputs = await materializeInputRoot({
      store: ctx.store,
      cache: this.opts.cache,
      rootDigest: inputRootDigest,
      dir: workspace.inputRoot,
      logger: ctx.logger,
    }).catch((err) => {
      throw asMissingInputs(err, inputRootDigest);
    });
    await createOutputParents(command, workingDir, workspace.inputRoot);
    timeline.inputFetchCompleted = new Date();
    recordDownloads(timeline.ioStats, inputs);
    throwIfAborted(ctx.signal);

    // Run the Command; a non-zero exit code is a result, not an error.
    await publisher.publish('EXECUTING', 'EXECUTING_COMMAND');
    const run = await this.run(runner, ctx, command, {
      workspace,
      workingDir,
      timeoutMs,
      graceMs,
    });
    throwIfAborted(ctx.signal);

    // Upload outputs, stdout and stderr, after a timeout too.
    await publisher.publish('EXECUTING', 'UPLOADING_OUTPUTS');
    timeline.outputUploadStart = new Date();
    const result = await this.upload(ctx, command, workspace, workingDir, run);
    timeline.outputUploadCompleted = new Date();

    // Answer with the result; a timed-out one keeps its partial outputs.
    const status = run.timedOut
      ? { code: Code.DEADLINE_EXCEEDED, message: `Command timed out after ${timeoutMs / 1000} s` }
      : { code: Code.OK, message: '' };
    return { result, status };
  }

  /** The runner for the task's `workload-isolation-type`, else the default. */
  private selectRunner(platform: Map<string, string>): Runner {
    const { runners, config } = this.opts;
    const requested = platform.get(PROPERTY.isolationType)?.toLowerCase();
    const wanted = requested || config.default_isolation_type;
    const runner = wanted ? runners.find((r) => r.isolation === wanted) : runners[0];
    if (!runner) {
      const supported = runners.map((r) => r.isolation).join(', ');
      throw invalidArgument(
        `Isolation type "${wanted}" is not supported by this executor (supported: ${supported})`,
      );
    }
    const image = platform.get(PROPERTY.containerImage) ?? '';
    const containerless = runner.isolation === 'none' || runner.isolation === 'sandbox';
    if (containerless && image !== '' && image.toLowerCase() !== 'none') {
      throw invalidArgument(
        `Platform property container-image="${image}" needs a container isolation type, but ` +
          `this action runs with "${runner.isolation}": remove container-image or set it to "none"`,
      );
    }
    return runner;
  }

  private async run(
    runner: Runner,
    ctx: TaskContext,
    command: Command__Output,
    where: { workspace: Workspace; workingDir: string; timeoutMs: number; graceMs: number },
  ): Promise<RunResult> {
    const prepared = await runner.prepare({ rootDir: where.workspace.inputRoot }, ctx.platform);
    try {
      const result = await prepared.run({
        arguments: command.arguments,
        environment: withExtraEnv(command, this.opts.config.extra_env_vars),
        workingDirectory: where.workingDir,
        timeoutMs: where.timeoutMs,
        terminationGraceMs: where.graceMs,
        stdoutPath: where.workspace.stdoutPath,
        stderrPath: where.workspace.stderrPath,
        signal: ctx.signal,
      });
      ctx.timeline.executionStart = result.startTime;
      ctx.timeline.executionCompleted = result.endTime;
      ctx.timeline.usageStats = {
        cpu_nanos: result.cpuNanos ?? 0,
        peak_memory_bytes: result.peakMemoryBytes ?? 0,
      };
      return result;
    } finally {
      await prepared.dispose();
    }
  }

  private async upload(
    ctx: TaskContext,
    command: Command__Output,
    workspace: Workspace,
    workingDir: string,
    run: RunResult,
  ): Promise<ActionResult> {
    const outputs = await collectOutputs({
      store: ctx.store,
      workingDir,
      inputRoot: workspace.inputRoot,
      command,
      cache: this.opts.cache,
      logger: ctx.logger,
    });
    const stdout = await fileDigest(workspace.stdoutPath);
    const stderr = await fileDigest(workspace.stderrPath);
    await ctx.store.writeMany([
      { digest: stdout, path: workspace.stdoutPath },
      { digest: stderr, path: workspace.stderrPath },
    ]);
    const { stats, ...files } = outputs;
    ctx.timeline.ioStats.file_upload_count = stats.files + 2;
    ctx.timeline.ioStats.file_upload_size_bytes =
      stats.bytesUploaded + stdout.size_bytes + stderr.size_bytes;
    return { ...files, exit_code: run.exitCode, stdout_digest: stdout, stderr_digest: stderr };
  }
}

/**
 * The effective timeout: Action.timeout, else platform `default-timeout`,
 * else `executor.default_task_timeout`. One above `max_task_timeout` is
 * INVALID_ARGUMENT.
 */
export function effectiveTimeout(
  actionTimeoutMs: number,
  platform: Map<string, string>,
  config: Pick<ExecutorConfig, 'default_task_timeout' | 'max_task_timeout'>,
): number {
  const timeout =
    actionTimeoutMs > 0
      ? actionTimeoutMs
      : (durationProperty(platform, PROPERTY.defaultTimeout) ?? config.default_task_timeout);
  if (timeout <= 0) throw invalidArgument(`Timeout ${timeout} ms is not positive`);
  if (config.max_task_timeout > 0 && timeout > config.max_task_timeout)
    throw invalidArgument(
      `Timeout ${timeout / 1000} s exceeds the executor's maximum of ` +
        `${config.max_task_timeout / 1000} s (executor.max_task_timeout)`,
    );
  return timeout;
}

/** Platform `termination-grace-period`, else the default, capped at the maximum. */
export function terminationGrace(
  platform: Map<string, string>,
  config: Pick<ExecutorConfig, 'default_termination_grace_period' | 'max_termination_grace_period'>,
): number {
  const grace =
    durationProperty(platform, PROPERTY.terminationGracePeriod) ??
    config.default_termination_grace_period;
  return Math.max(0, Math.min(grace, config.max_termination_grace_period));
}

/** SHA-256 is the one digest function the executor verifies blobs with. */
function checkDigestFunction(task: ExecutionTask__Output): void {
  const fn = task.execute_request?.digest_function ?? 'UNKNOWN';
  if (fn !== 'UNKNOWN' && fn !== 'SHA256')
    throw invalidArgument(`Digest function ${fn} is not supported: use SHA256`);
}

/** Output paths and the working directory must stay inside the input root. */
function checkCommand(command: Command__Output): void {
  if (command.arguments.length === 0) throw invalidArgument('Command.arguments is empty');
  checkOutputPaths(command);
}

function splitPath(path: string): string[] {
  return path === '' ? [] : path.split('/');
}

/**
 * The Command's environment plus `executor.extra_env_vars` ("NAME=VALUE",
 * or "NAME" to pass the executor's own value), which override.
 */
function withExtraEnv(command: Command__Output, extra: string[]) {
  const env = new Map(command.environment_variables.map((v) => [v.name, v.value]));
  for (const entry of extra) {
    const at = entry.indexOf('=');
    if (at >= 0) env.set(entry.slice(0, at), entry.slice(at + 1));
    else if (process.env[entry] !== undefined) env.set(entry, process.env[entry]!);
  }
  return [...env].map(([name, value]) => ({ name, value }));
}

/**
 * A NOT_FOUND that leaked from input download becomes FAILED_PRECONDITION
 * with MISSING violations (naming the input root when the error named no
 * blob), the form that makes Bazel re-upload its inputs.
 */
function asMissingInputs(err: unknown, inputRoot: BlobDigest): unknown {
  if (codeOf(err) !== Code.NOT_FOUND) return err;
  const message = messageOf(err);
  if (missingDigestsOf(err).length > 0)
    return new GrpcError(Code.FAILED_PRECONDITION, message, (err as GrpcError).details);
  const violation = { type: 'MISSING', subject: missingSubject(inputRoot), description: message };
  return new GrpcError(Code.FAILED_PRECONDITION, message, [
    packAny('google.rpc.PreconditionFailure', { violations: [violation] }),
  ]);
}

function recordDownloads(io: IOStats, stats: Awaited<ReturnType<typeof materializeInputRoot>>) {
  io.file_download_count = stats.filesDownloaded;
  io.file_download_size_bytes = stats.bytesDownloaded;
  io.file_download_duration_usec = stats.durationMs * 1000;
  io.local_cache_hits = stats.cacheHits;
}

function throwIfAborted(signal: AbortSignal): void {
  if (!signal.aborted) return;
  throw signal.reason instanceof GrpcError ? signal.reason : unavailable('The task was aborted');
}

async function fileDigest(path: string): Promise<BlobDigest> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { hash: hash.digest('hex'), size_bytes: size };
}
