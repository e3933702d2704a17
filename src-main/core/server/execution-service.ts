import type * as grpc from '@grpc/grpc-js';

import type { ActionCacheStore, BlobStore } from '../cas/types.js';
import { checkDigest, digestKey, type BlobDigest } from '../digest.js';
import { Code, GrpcError, invalidArgument, messageOf, notFound, wrap } from '../errors.js';
import type { Logger } from '../log.js';
import {
  decode,
  encode,
  grpcPackage,
  packAny,
  unpackAny,
  type Action__Output,
  type ActionResult__Output,
  type Command__Output,
  type ExecuteRequest__Output,
  type ExecuteResponse__Output,
  type ExecutionHandlers,
  type ExecutionTask,
  type Operation,
  type Operation__Output,
  type RequestMetadata__Output,
} from '../proto/index.js';
import { checkActionResult, missingReference } from './ac-service.js';
import { missingBlobsError } from './execution-status.js';
import type { Execution, ExecutionStore } from './execution-store.js';
import {
  newExecutionId,
  platformProperty,
  schedulingMetadataFor,
  timestampOf,
} from './execution-task.js';
import { checkDigestFunction, toServiceError, type GrpcService } from './grpc-service.js';
import type { TaskScheduler } from './scheduler-core.js';
import type { NewTask } from './task-store.js';

export interface ExecutionServiceOptions {
  blobs: BlobStore;
  actionCache: ActionCacheStore;
  scheduler: TaskScheduler;
  executions: ExecutionStore;
  logger: Logger;
}

/** The header in which Bazel sends its RequestMetadata. */
export const REQUEST_METADATA_KEY = 'build.bazel.remote.execution.v2.requestmetadata-bin';
const ACTION = 'build.bazel.remote.execution.v2.Action';
const COMMAND = 'build.bazel.remote.execution.v2.Command';
const EXECUTION_TASK = 'build.bazel.remote.execution.v2.ExecutionTask';
const EXECUTE_RESPONSE = 'build.bazel.remote.execution.v2.ExecuteResponse';
const OPERATION_METADATA = 'build.bazel.remote.execution.v2.ExecuteOperationMetadata';

/**
 * build.bazel.remote.execution.v2.Execution for clients (Execute,
 * WaitExecution) and for executors (BuildBuddy's PublishOperation).
 *
 * Execute answers from the Action Cache when it can, otherwise creates a
 * task for the scheduler and streams the execution's Operations (QUEUED,
 * then whatever the executor publishes, then COMPLETED). When an executor
 * publishes a successful COMPLETED result, it is written to the Action
 * Cache before clients hear of it, so a following GetActionResult hits.
 *
 * When the last client watching an execution (Execute, merged Executes and
 * WaitExecution alike) goes away before it completes, the execution waits
 * for the abandon grace (see createExecutionStore) for a client to
 * re-attach with WaitExecution or an identical Execute. If none does, it is
 * cancelled as BuildBuddy cancels an interrupted invocation's work: the task
 * leaves the scheduler (an executor running it aborts at its next lease
 * keep-alive) and the execution completes with status CANCELLED, which a
 * later WaitExecution returns. Whatever the executor still publishes for it
 * is accepted and dropped.
 *
 * Trust model: PublishOperation trusts its caller, as BuildBuddy trusts
 * any caller holding the task's JWT, and does not ask which lease it holds
 * (the protocol's Operations name no lease). The embedded server issues no
 * task JWTs, so whoever reaches its port and knows an execution's name (a
 * random UUID, known to the clients watching it and to executors) can
 * complete that execution: no more than UpdateActionResult, which is open to
 * every client too. What is published is still checked: an unknown name is
 * NOT_FOUND, and a done Operation without a decodable ExecuteResponse or
 * with an invalid ActionResult (see checkActionResult) is INVALID_ARGUMENT
 * and leaves the execution running.
 *
 * Limitation: ExecutionTask.jwt is always empty (the embedded server has no
 * per-client credentials), and x-buildbuddy-platform.* headers are not
 * turned into platform_overrides.
 */
export function createExecutionService(opts: ExecutionServiceOptions): GrpcService {
  opts.executions.onAbandoned((execution) => cancelAbandoned(opts, execution));
  const implementation: ExecutionHandlers = {
    Execute: (call) => {
      execute(opts, call).catch((err) => call.emit('error', toServiceError(err)));
    },
    WaitExecution: (call) => {
      const execution = opts.executions.get(call.request.name);
      if (execution === undefined) {
        call.emit('error', toServiceError(notFound(`Operation "${call.request.name}" not found`)));
        return;
      }
      streamOperations(opts.executions, execution.id, call);
    },
    PublishOperation: (call, callback) => receivePublished(opts, call, callback),
  };
  const definition = grpcPackage().build.bazel.remote.execution.v2.Execution.service;
  return { definition, implementation };
}

/**
 * Registers a task that arrived through Scheduler.ScheduleTask as an
 * execution (so that executors can publish to it and clients can wait on
 * it) and schedules it.
 */
export function adoptScheduledTask(
  executions: ExecutionStore,
  scheduler: TaskScheduler,
  task: NewTask,
): void {
  if (executions.get(task.id) !== undefined)
    throw new GrpcError(Code.ALREADY_EXISTS, `Execution "${task.id}" already exists`);
  const decoded = decodeBlob(EXECUTION_TASK, task.serializedTask, 'ExecutionTask');
  const actionDigest = checkDigest(decoded.execute_request?.action_digest);
  const cacheable = !(decoded.action?.do_not_cache ?? false);
  scheduler.schedule(task);
  executions.create({ id: task.id, actionDigest, cacheable });
}

type ExecuteCall = grpc.ServerWritableStream<ExecuteRequest__Output, Operation>;

async function execute(opts: ExecutionServiceOptions, call: ExecuteCall): Promise<void> {
  const req = call.request;
  const log = opts.logger;

  // Validate the request.
  const actionDigest = checkDigest(req.action_digest);
  checkDigestFunction(req.digest_function);

  // Fetch the Action and Command, and check that the input root exists.
  const { action, command } = await fetchAction(opts.blobs, actionDigest);

  // Answer from the Action Cache unless the client asked not to.
  if (!req.skip_cache_lookup) {
    const cached = await opts.actionCache.get(actionDigest);
    if (cached !== undefined && missingReference(opts.blobs, cached) === undefined) {
      // Remembered like any execution, so WaitExecution on its name answers.
      const op = cachedOperation(req.instance_name, actionDigest, cached);
      opts.executions.create({ id: op.name!, actionDigest, cacheable: false });
      opts.executions.publish(op.name!, op);
      log.info(
        { task_id: op.name, action_digest: digestKey(actionDigest) },
        'Execute answered from the Action Cache',
      );
      streamOperations(opts.executions, op.name!, call);
      return;
    }
  }

  // Join an identical execution that is already running.
  const mergeable = !action.do_not_cache && !req.skip_cache_lookup;
  const mergeKey = mergeable ? `${req.instance_name}\n${digestKey(actionDigest)}` : undefined;
  const running = mergeKey === undefined ? undefined : opts.executions.findRunning(mergeKey);
  if (running !== undefined) {
    log.debug({ task_id: running.id }, 'Execute merged with a running execution');
    streamOperations(opts.executions, running.id, call);
    return;
  }

  // Create the task and hand it to the scheduler, unless no executor could
  // ever take it: then the client hears why at once instead of waiting.
  const id = newExecutionId(req.instance_name, actionDigest);
  const queuedAt = new Date();
  const metadata = schedulingMetadataFor(action, command, queuedAt);
  const unschedulable = opts.scheduler.unschedulable(metadata, metadata.task_size!);
  if (unschedulable) throw unschedulable;
  const requestMetadata = requestMetadataOf(call.metadata);
  const task: ExecutionTask = {
    execute_request: req,
    invocation_id: requestMetadata?.tool_invocation_id ?? '',
    action,
    command,
    execution_id: id,
    queued_timestamp: timestampOf(queuedAt),
    request_metadata: requestMetadata,
  };
  const serializedTask = encode(EXECUTION_TASK, task);
  opts.executions.create({
    id,
    actionDigest,
    cacheable: !action.do_not_cache,
    mergeKey,
    cancelWhenAbandoned: true,
  });
  const noRetry = platformProperty(action, command, 'retry')?.toLowerCase() === 'false';
  opts.scheduler.schedule({ id, serializedTask, metadata, size: metadata.task_size!, noRetry });
  log.info({ task_id: id, action_digest: digestKey(actionDigest) }, 'Execution queued');

  // Stream its Operations until it completes.
  streamOperations(opts.executions, id, call);
}

/** Reads the Action and Command; all missing blobs are reported together as MISSING. */
async function fetchAction(
  blobs: BlobStore,
  actionDigest: BlobDigest,
): Promise<{ action: Action__Output; command: Command__Output }> {
  const actionBytes = await blobs.get(actionDigest);
  if (actionBytes === undefined) throw missingBlobsError('Action', [actionDigest]);
  const action = decodeBlob(ACTION, actionBytes, 'Action');
  const commandDigest = checkBlobDigest(action.command_digest, 'Action.command_digest');
  const inputRootDigest = checkBlobDigest(action.input_root_digest, 'Action.input_root_digest');

  const commandBytes = await blobs.get(commandDigest);
  const missing = blobs.findMissing([inputRootDigest]);
  if (commandBytes === undefined) missing.unshift(commandDigest);
  if (missing.length > 0) throw missingBlobsError('Command or input root', missing);
  return { action, command: decodeBlob(COMMAND, commandBytes!, 'Command') };
}

function checkBlobDigest(d: Action__Output['command_digest'], field: string): BlobDigest {
  try {
    return checkDigest(d);
  } catch (err) {
    throw wrap(err, `Invalid ${field}`);
  }
}

function decodeBlob<N extends typeof ACTION | typeof COMMAND | typeof EXECUTION_TASK>(
  name: N,
  bytes: Buffer,
  what: string,
) {
  try {
    return decode(name, bytes);
  } catch (err) {
    throw invalidArgument(`Failed to parse the ${what}: ${(err as Error).message}`);
  }
}

/** Bazel's RequestMetadata header, minus tool_details as BuildBuddy strips it. */
function requestMetadataOf(metadata: grpc.Metadata): RequestMetadata__Output | null {
  const raw = metadata.get(REQUEST_METADATA_KEY)[0];
  if (!Buffer.isBuffer(raw)) return null;
  try {
    const decoded = decode('build.bazel.remote.execution.v2.RequestMetadata', raw);
    return { ...decoded, tool_details: null };
  } catch {
    return null;
  }
}

function cachedOperation(
  instanceName: string,
  actionDigest: BlobDigest,
  result: ActionResult__Output,
): Operation {
  return {
    name: newExecutionId(instanceName, actionDigest),
    done: true,
    metadata: packAny(OPERATION_METADATA, { stage: 'COMPLETED', action_digest: actionDigest }),
    response: packAny(EXECUTE_RESPONSE, {
      result,
      cached_result: true,
      status: { code: Code.OK, message: '' },
    }),
  };
}

/** Writes every Operation of an execution to a client stream and ends it when done. */
function streamOperations(
  executions: ExecutionStore,
  id: string,
  call: grpc.ServerWritableStream<unknown, Operation>,
): void {
  let ended = false;
  const stop = executions.watch(id, (op) => {
    if (ended || call.cancelled) return;
    call.write(op);
    if (op.done) {
      ended = true;
      call.end();
    }
  });
  // A client that goes away stops watching (possibly abandoning the execution).
  call.on('cancelled', () => stop());
  if (call.cancelled) stop();
}

/** The status of an execution cancelled because its clients went away. */
const ABANDONED_STATUS = {
  code: Code.CANCELLED,
  message: 'Execution cancelled: no client was waiting for it',
};

/** Cancels an execution no client watched for the abandon grace period. */
function cancelAbandoned(opts: ExecutionServiceOptions, execution: Execution): void {
  const state = opts.scheduler.cancel(execution.id);
  opts.executions.fail(execution.id, ABANDONED_STATUS);
  opts.logger.info(
    {
      task_id: execution.id,
      action_digest: digestKey(execution.actionDigest),
      task_state: state ?? 'gone',
    },
    'Execution cancelled: no client was waiting for it',
  );
}

type PublishCall = grpc.ServerReadableStream<Operation__Output, unknown>;

/**
 * PublishOperation: Operations are handled strictly in order; the reply
 * comes when the executor half-closes, or the first error ends the call.
 */
function receivePublished(
  opts: ExecutionServiceOptions,
  call: PublishCall,
  callback: grpc.sendUnaryData<object>,
): void {
  let chain: Promise<void> = Promise.resolve();
  let failed = false;
  const fail = (err: unknown) => {
    if (failed) return;
    failed = true;
    callback(toServiceError(err) as grpc.ServiceError);
  };
  call.on('data', (op: Operation__Output) => {
    chain = chain.then(() => (failed ? undefined : publishOne(opts, op))).catch(fail);
  });
  call.on('end', () => {
    chain = chain.then(() => {
      if (!failed) callback(null, {});
    });
  });
  call.on('error', fail);
}

async function publishOne(opts: ExecutionServiceOptions, op: Operation__Output): Promise<void> {
  const execution = opts.executions.get(op.name);
  if (execution === undefined) throw notFound(`Execution "${op.name}" is not known to this server`);
  // A late or repeated completion (for example after the lease moved) is dropped.
  if (execution.done) return;
  if (op.done) {
    const response = completedResponse(op);
    await cacheResult(opts, execution, response);
    opts.scheduler.markCompleted(execution.id);
    logOutcome(opts.logger, execution, response);
  }
  opts.executions.publish(execution.id, op as Operation);
}

/**
 * The ExecuteResponse of a done Operation, checked; undefined when the
 * Operation carries an error instead. INVALID_ARGUMENT when it carries
 * neither, when the response does not decode, or when its ActionResult is
 * invalid.
 */
function completedResponse(op: Operation__Output): ExecuteResponse__Output | undefined {
  if (op.result === 'error') return undefined;
  const what = `Published Operation "${op.name}"`;
  let response: ExecuteResponse__Output | undefined;
  try {
    response = unpackAny(EXECUTE_RESPONSE, op.response);
  } catch (err) {
    throw invalidArgument(`${what} has an ExecuteResponse that does not decode: ${messageOf(err)}`);
  }
  if (response === undefined) throw invalidArgument(`${what} is done but has no ExecuteResponse`);
  try {
    if (response.result != null) checkActionResult(response.result);
  } catch (err) {
    throw wrap(err, `${what} has an invalid ActionResult`);
  }
  return response;
}

/**
 * Writes a successful result to the Action Cache, as BuildBuddy's app does:
 * status OK, exit code 0, not itself a cache hit, and the Action cacheable.
 * The executor's auxiliary metadata is stripped first.
 */
async function cacheResult(
  opts: ExecutionServiceOptions,
  execution: Execution,
  response: ExecuteResponse__Output | undefined,
): Promise<void> {
  const result = response?.result;
  if (response === undefined || result == null || !execution.cacheable) return;
  if ((response.status?.code ?? 0) !== Code.OK || result.exit_code !== 0) return;
  if (response.cached_result) return;
  const metadata = result.execution_metadata;
  const stripped = {
    ...result,
    execution_metadata: metadata === null ? null : { ...metadata, auxiliary_metadata: [] },
  };
  try {
    await opts.actionCache.put(execution.actionDigest, stripped);
  } catch (err) {
    opts.logger.warn(
      { task_id: execution.id, err: (err as Error).message },
      'Failed to write the ActionResult to the Action Cache',
    );
  }
}

function logOutcome(
  log: Logger,
  execution: Execution,
  response: ExecuteResponse__Output | undefined,
): void {
  log.info(
    {
      task_id: execution.id,
      action_digest: digestKey(execution.actionDigest),
      exit_code: response?.result?.exit_code,
      status: response?.status?.code ?? 0,
    },
    'Execution completed',
  );
}
