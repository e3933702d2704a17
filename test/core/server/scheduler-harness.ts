// Shared pieces for the embedded server's tests: a server on loopback with
// short leases, a REAPI client that uploads Actions, and a scripted executor
// that speaks BuildBuddy's scheduler protocol step by step, so each test
// decides exactly what the executor does and when.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import * as grpc from '@grpc/grpc-js';

import { digestOf, type BlobDigest } from '../../../src-main/core/digest.js';
import {
  decode,
  encode,
  grpcPackage,
  packAny,
  unpackAny,
  type ActionResult,
  type ExecuteResponse__Output,
  type ExecutionNode,
  type Operation,
  type Operation__Output,
  type RegisterAndStreamWorkResponse__Output,
  type LeaseTaskResponse__Output,
  type LeaseTaskRequest,
} from '../../../src-main/core/proto/index.js';
import {
  startServer,
  type EmbeddedServer,
  type ServerOptions,
} from '../../../src-main/core/server/server.js';

/** Fast lease timings so that expiry tests take well under a second. */
export const SHORT_LEASES = { leaseDurationMs: 150, leaseGraceMs: 150, reconnectGraceMs: 150 };

export interface TestServer {
  server: EmbeddedServer;
  address: string;
  stop(): Promise<void>;
}

export async function startTestServer(overrides: Partial<ServerOptions> = {}): Promise<TestServer> {
  const dataDirectory = await mkdtemp(join(tmpdir(), 'idlebuild-server-'));
  const server = await startServer({
    port: 0,
    dataDirectory,
    ...SHORT_LEASES,
    ...overrides,
  }).catch(async (err: unknown) => {
    await rm(dataDirectory, { recursive: true, force: true });
    throw err;
  });
  return {
    server,
    address: server.address,
    stop: async () => {
      await server.close(0);
      await rm(dataDirectory, { recursive: true, force: true });
    },
  };
}

/** Messages from a stream, awaited one at a time with a deadline. */
export class Inbox<T> {
  private readonly items: T[] = [];
  private readonly waiters: ((item: T) => void)[] = [];
  error: grpc.ServiceError | undefined;
  ended = false;
  private endWaiters: (() => void)[] = [];

  push(item: T): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  }

  finish(err?: grpc.ServiceError): void {
    this.error ??= err;
    this.ended = true;
    for (const w of this.endWaiters) w();
    this.endWaiters = [];
  }

  next(timeoutMs = 2000): Promise<T> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve(item);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(onItem), 1);
        reject(new Error(`No message within ${timeoutMs} ms`));
      }, timeoutMs);
      const onItem = (it: T) => {
        clearTimeout(timer);
        resolve(it);
      };
      this.waiters.push(onItem);
    });
  }

  /** Resolves when nothing arrives for `ms`; rejects with what arrived otherwise. */
  async expectNothing(ms: number): Promise<void> {
    const got = await this.next(ms).then(
      (x) => x,
      () => undefined,
    );
    if (got !== undefined) throw new Error(`Unexpected message: ${JSON.stringify(got)}`);
  }

  /** Waits for the stream to end; returns its error, if any. */
  closed(timeoutMs = 2000): Promise<grpc.ServiceError | undefined> {
    if (this.ended) return Promise.resolve(this.error);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('Stream did not end')), timeoutMs);
      this.endWaiters.push(() => {
        clearTimeout(timer);
        resolve(this.error);
      });
    });
  }

  pending(): T[] {
    return [...this.items];
  }
}

function collect<T>(stream: grpc.ClientReadableStream<T> | grpc.ClientDuplexStream<unknown, T>) {
  const inbox = new Inbox<T>();
  stream.on('data', (m: T) => inbox.push(m));
  stream.on('error', (e: grpc.ServiceError) => inbox.finish(e));
  stream.on('end', () => inbox.finish());
  return inbox;
}

const v2 = () => grpcPackage().build.bazel.remote.execution.v2;
const insecure = () => grpc.credentials.createInsecure();

// ---------------------------------------------------------------- the client side

export interface ActionSpec {
  args?: string[];
  platform?: Record<string, string>;
  doNotCache?: boolean;
  /** Leave these out of the CAS. */
  skipUpload?: ('action' | 'command' | 'inputRoot')[];
}

export interface UploadedAction {
  actionDigest: BlobDigest;
  commandDigest: BlobDigest;
  inputRootDigest: BlobDigest;
}

/** A REAPI client: uploads Actions, calls Execute and WaitExecution. */
export class TestClient {
  readonly cas;
  readonly ac;
  readonly execution;
  private readonly calls: grpc.ClientReadableStream<unknown>[] = [];

  constructor(address: string) {
    this.cas = new (v2().ContentAddressableStorage)(address, insecure());
    this.ac = new (v2().ActionCache)(address, insecure());
    this.execution = new (v2().Execution)(address, insecure());
  }

  async upload(blobs: Buffer[]): Promise<void> {
    const requests = blobs.map((data) => ({ digest: digestOf(data), data }));
    await new Promise<void>((resolve, reject) =>
      this.cas.BatchUpdateBlobs({ requests }, (err, res) => {
        if (err) return reject(err);
        const bad = res!.responses.find((r) => r.status?.code !== 0);
        if (bad) reject(new Error(`Upload failed: ${bad.status?.message}`));
        else resolve();
      }),
    );
  }

  async uploadAction(spec: ActionSpec = {}): Promise<UploadedAction> {
    const skip = new Set(spec.skipUpload ?? []);
    const properties = Object.entries(spec.platform ?? {})
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([name, value]) => ({ name, value }));
    const args = spec.args ?? ['/bin/echo', 'hello'];
    // Each Action gets its own input root, so "missing" tests stay independent.
    const inputRoot = encode('build.bazel.remote.execution.v2.Directory', {
      files: [{ name: `in-${args.join('-')}.txt`, digest: digestOf(Buffer.from('input')) }],
    });
    const command = encode('build.bazel.remote.execution.v2.Command', {
      arguments: args,
      output_paths: ['out.txt'],
      platform: { properties },
    });
    const action = encode('build.bazel.remote.execution.v2.Action', {
      command_digest: digestOf(command),
      input_root_digest: digestOf(inputRoot),
      do_not_cache: spec.doNotCache ?? false,
      platform: { properties },
    });
    const blobs: Buffer[] = [Buffer.from('input')];
    if (!skip.has('inputRoot')) blobs.push(inputRoot);
    if (!skip.has('command')) blobs.push(command);
    if (!skip.has('action')) blobs.push(action);
    await this.upload(blobs);
    return {
      actionDigest: digestOf(action),
      commandDigest: digestOf(command),
      inputRootDigest: digestOf(inputRoot),
    };
  }

  execute(
    actionDigest: BlobDigest,
    opts: { skipCacheLookup?: boolean; metadata?: grpc.Metadata } = {},
  ): Inbox<Operation__Output> {
    const call = this.execution.Execute(
      { action_digest: actionDigest, skip_cache_lookup: opts.skipCacheLookup ?? false },
      opts.metadata ?? new grpc.Metadata(),
    );
    this.calls.push(call);
    return collect(call);
  }

  waitExecution(name: string): Inbox<Operation__Output> {
    const call = this.execution.WaitExecution({ name });
    this.calls.push(call);
    return collect(call);
  }

  getActionResult(actionDigest: BlobDigest): Promise<grpc.ServiceError | object> {
    return new Promise((resolve) =>
      this.ac.GetActionResult({ action_digest: actionDigest }, (err, res) => resolve(err ?? res!)),
    );
  }

  close(): void {
    for (const c of this.calls) c.cancel();
    this.cas.close();
    this.ac.close();
    this.execution.close();
  }
}

export function stageOf(op: Operation__Output): string | undefined {
  return unpackAny('build.bazel.remote.execution.v2.ExecuteOperationMetadata', op.metadata)?.stage;
}

export function responseOf(op: Operation__Output): ExecuteResponse__Output | undefined {
  return unpackAny('build.bazel.remote.execution.v2.ExecuteResponse', op.response);
}

/** Reads the operations of an Execute stream until the done one. */
export async function untilDone(inbox: Inbox<Operation__Output>): Promise<Operation__Output[]> {
  const ops: Operation__Output[] = [];
  for (;;) {
    const op = await inbox.next();
    ops.push(op);
    if (op.done) return ops;
  }
}

/** The PreconditionFailure violations in an error's grpc-status-details-bin trailer. */
export function violationsOf(err: grpc.ServiceError): { type: string; subject: string }[] {
  const raw = err.metadata?.get('grpc-status-details-bin')[0];
  if (!Buffer.isBuffer(raw)) return [];
  const status = decode('google.rpc.Status', raw);
  return status.details.flatMap(
    (any) => unpackAny('google.rpc.PreconditionFailure', any)?.violations ?? [],
  );
}

// ---------------------------------------------------------------- the executor side

let executorCount = 0;

/**
 * A scripted executor: registers on RegisterAndStreamWork and records the
 * reservations it gets; the test leases, publishes and finalizes by hand.
 */
export class TestExecutor {
  readonly scheduler;
  readonly execution;
  readonly work;
  readonly reservations: Inbox<RegisterAndStreamWorkResponse__Output>;
  readonly node: ExecutionNode;
  private readonly streams: { cancel(): void }[] = [];

  constructor(address: string, node: Partial<ExecutionNode> = {}, apiKey?: string) {
    this.scheduler = new (grpcPackage().scheduler.Scheduler)(address, insecure());
    this.execution = new (v2().Execution)(address, insecure());
    this.node = {
      host: 'test-host',
      port: 1,
      assignable_memory_bytes: 8e9,
      assignable_milli_cpu: 4000,
      os_family: 'linux',
      arch: 'amd64',
      pool: '',
      executor_id: `executor-${++executorCount}`,
      ...node,
    };
    const metadata = new grpc.Metadata();
    if (apiKey !== undefined) metadata.set('x-buildbuddy-api-key', apiKey);
    this.work = this.scheduler.RegisterAndStreamWork(metadata);
    this.streams.push(this.work);
    this.reservations = collect(this.work);
    this.register();
  }

  register(node: Partial<ExecutionNode> = {}): void {
    this.work.write({ register_executor_request: { node: { ...this.node, ...node } } });
  }

  /** The next reservation's task ID (acknowledged, as a real executor does). */
  async nextReservation(timeoutMs = 2000): Promise<string> {
    return (await this.nextReservationRequest(timeoutMs)).task_id;
  }

  async nextReservationRequest(timeoutMs = 2000) {
    const msg = await this.reservations.next(timeoutMs);
    const req = msg.enqueue_task_reservation_request;
    if (!req?.task_id) throw new Error(`Expected a reservation, got ${JSON.stringify(msg)}`);
    this.work.write({ enqueue_task_reservation_response: { task_id: req.task_id } });
    return req;
  }

  /**
   * Resolves once the server has processed the registration: asks for more
   * work and expects the "nothing to do" answer. Use it only while no task
   * is waiting. Returns the back-off delay the server chose.
   */
  async ready(): Promise<number> {
    this.work.write({ ask_for_more_work_request: {} });
    const msg = await this.reservations.next();
    const delay = msg.ask_for_more_work_response?.delay;
    if (!delay) throw new Error(`Expected ask_for_more_work_response, got ${JSON.stringify(msg)}`);
    return delay.seconds * 1000 + delay.nanos / 1e6;
  }

  lease(taskId: string, extra: Partial<LeaseTaskRequest> = {}): TestLease {
    const call = this.scheduler.LeaseTask();
    this.streams.push(call);
    const lease = new TestLease(call, taskId, collect(call));
    call.write({
      task_id: taskId,
      executor_id: this.node.executor_id,
      supports_reconnect: true,
      ...extra,
    });
    return lease;
  }

  /** Publishes operations on one PublishOperation stream and half-closes it. */
  publish(ops: Operation[]): Promise<grpc.ServiceError | undefined> {
    return new Promise((resolve) => {
      const call = this.execution.PublishOperation((err) => resolve(err ?? undefined));
      for (const op of ops) call.write(op);
      call.end();
    });
  }

  close(): void {
    for (const s of this.streams) s.cancel();
    this.scheduler.close();
    this.execution.close();
  }
}

export class TestLease {
  constructor(
    readonly call: grpc.ClientDuplexStream<LeaseTaskRequest, LeaseTaskResponse__Output>,
    readonly taskId: string,
    readonly responses: Inbox<LeaseTaskResponse__Output>,
  ) {}

  send(req: Partial<LeaseTaskRequest>): void {
    this.call.write({ task_id: this.taskId, ...req });
  }

  /** Closes the lease with finalize and returns closed_cleanly. */
  async finalize(): Promise<boolean> {
    this.send({ finalize: true });
    const res = await this.responses.next();
    this.call.end();
    return res.closed_cleanly;
  }

  async reEnqueue(message = 'runner failed'): Promise<boolean> {
    this.send({ re_enqueue: true, re_enqueue_reason: { code: 14, message } });
    const res = await this.responses.next();
    this.call.end();
    return res.closed_cleanly;
  }
}

/** The ExecutionTask inside a first LeaseTaskResponse. */
export function taskOf(res: LeaseTaskResponse__Output) {
  return decode('build.bazel.remote.execution.v2.ExecutionTask', res.serialized_task);
}

/** An EXECUTING progress Operation, as the executor publishes it. */
export function executingOp(name: string, actionDigest: BlobDigest): Operation {
  return {
    name,
    done: false,
    metadata: packAny('build.bazel.remote.execution.v2.ExecuteOperationMetadata', {
      stage: 'EXECUTING',
      action_digest: actionDigest,
    }),
  };
}

/** The final COMPLETED Operation with an ActionResult. */
export function completedOp(
  name: string,
  actionDigest: BlobDigest,
  result: ActionResult,
  status: { code: number; message: string } = { code: 0, message: '' },
): Operation {
  return {
    name,
    done: true,
    metadata: packAny('build.bazel.remote.execution.v2.ExecuteOperationMetadata', {
      stage: 'COMPLETED',
      action_digest: actionDigest,
    }),
    response: packAny('build.bazel.remote.execution.v2.ExecuteResponse', { result, status }),
  };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
