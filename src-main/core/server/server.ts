import * as grpc from '@grpc/grpc-js';
import { mkdir } from 'node:fs/promises';
import { lockDirectory } from '../dir-lock.js';

import { Code, GrpcError, messageOf } from '../errors.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';
import { createActionCacheService } from './ac-service.js';
import { createActionCacheStore } from './action-cache.js';
import { createBlobStore } from './blob-store.js';
import { createByteStreamService } from './bytestream-service.js';
import { createCapabilitiesService } from './capabilities-service.js';
import { createCasService } from './cas-service.js';
import { adoptScheduledTask, createExecutionService } from './execution-service.js';
import { createExecutionStore } from './execution-store.js';
import type { GrpcService } from './grpc-service.js';
import { createTaskScheduler, type TaskScheduler } from './scheduler-core.js';
import { createSchedulerService } from './scheduler-service.js';
import { GRPC_SERVER_OPTIONS } from './server-options.js';

export interface ServerOptions {
  /** Interface to listen on; default 127.0.0.1 (loopback only). */
  host?: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** Where the CAS and the Action Cache live (created if needed). */
  dataDirectory: string;
  /** When set, executors must present it as `x-buildbuddy-api-key`. */
  executorApiKey?: string;
  /** Serve Execution and the scheduler (default true); false makes a cache-only server. */
  execEnabled?: boolean;
  /** Lease length announced to executors (default 10 s); shrink only in tests. */
  leaseDurationMs?: number;
  /** Extra time after a lease before it expires (default 10 s). */
  leaseGraceMs?: number;
  /** How long a lost lease waits for its holder to reconnect (default 1 s). */
  reconnectGraceMs?: number;
  /**
   * How long an execution whose clients all went away waits for one to
   * re-attach before it is cancelled (default 10 s); shrink only in tests.
   */
  abandonGraceMs?: number;
  logger?: Logger;
}

/** A running embedded server. */
export interface EmbeddedServer {
  /** "host:port" as bound, e.g. "127.0.0.1:1985". */
  address: string;
  port: number;
  /**
   * Stops accepting calls, lets running calls finish for up to `graceMs`
   * (default 5 s), then cancels the rest (executors' streams never end on
   * their own).
   */
  close(graceMs?: number): Promise<void>;
  /** Tasks waiting for an executor to lease them, for autoscaling metrics. */
  queueLength(): number;
}

/**
 * Starts the embedded server: one gRPC server with REAPI's CAS, Action
 * Cache, ByteStream and Capabilities over the stores in `dataDirectory`,
 * and (unless execEnabled is false) Execution plus BuildBuddy's
 * scheduler.Scheduler, so that Bazel clients and Idlebuild or BuildBuddy
 * executors can meet on it. This is the server's composition root.
 */
export async function startServer(opts: ServerOptions): Promise<EmbeddedServer> {
  const log = opts.logger ?? silentLogger;
  const execEnabled = opts.execEnabled ?? true;
  const host = opts.host ?? '127.0.0.1';

  // Claim the data directory, open the stores and build the cache services.
  await mkdir(opts.dataDirectory, { recursive: true });
  const lock = await lockDirectory(opts.dataDirectory, 'server data directory (--data-dir)');
  const blobStore = await createBlobStore({ directory: opts.dataDirectory, logger: log });
  const actionCache = await createActionCacheStore({ directory: opts.dataDirectory, logger: log });
  const byteStream = createByteStreamService({ blobStore, logger: log });
  const services: GrpcService[] = [
    createCasService({ blobStore, logger: log }),
    byteStream,
    createActionCacheService({ actionCache, blobStore, logger: log }),
    createCapabilitiesService({ execEnabled, logger: log }),
  ];

  // Add execution: the scheduler, its service, and the Execution service.
  let scheduler: TaskScheduler | undefined;
  const executions = createExecutionStore({ abandonGraceMs: opts.abandonGraceMs });
  if (execEnabled) {
    scheduler = createTaskScheduler({
      logger: moduleLogger(log, 'scheduler'),
      onTaskFailed: (id, message) => executions.fail(id, { code: Code.INTERNAL, message }),
      leaseDurationMs: opts.leaseDurationMs,
      leaseGraceMs: opts.leaseGraceMs,
      reconnectGraceMs: opts.reconnectGraceMs,
    });
    const tasks = scheduler;
    services.push(
      createSchedulerService({
        scheduler: tasks,
        scheduleTask: (task) => adoptScheduledTask(executions, tasks, task),
        executorApiKey: opts.executorApiKey,
        logger: moduleLogger(log, 'scheduler'),
      }),
      createExecutionService({
        blobs: blobStore,
        actionCache,
        scheduler: tasks,
        executions,
        logger: moduleLogger(log, 'execution'),
      }),
    );
  }

  // Listen.
  const server = new grpc.Server(GRPC_SERVER_OPTIONS);
  for (const s of services) server.addService(s.definition, s.implementation);
  const port = await bind(server, host, opts.port).catch(async (err: unknown) => {
    scheduler?.close();
    executions.close();
    await byteStream.close();
    await lock.release();
    throw err;
  });
  const address = `${formatHost(host)}:${port}`;
  log.info({ address, exec_enabled: execEnabled }, 'Embedded server listening');

  return {
    address,
    port,
    queueLength: () => scheduler?.queueLength() ?? 0,
    close: async (graceMs = 5000) => {
      scheduler?.close();
      executions.close();
      await shutdown(server, graceMs);
      await byteStream.close();
      await lock.release();
    },
  };
}

function bind(server: grpc.Server, host: string, port: number): Promise<number> {
  const address = `${formatHost(host)}:${port}`;
  return new Promise((resolve, reject) => {
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, bound) => {
      if (err === null) return resolve(bound);
      const inUse = /EADDRINUSE|address already in use/i.test(messageOf(err));
      const reason = inUse
        ? 'the address is already in use (is another Idlebuild server running?); ' +
          'choose another port with --port'
        : `${messageOf(err)}; check --host and --port`;
      reject(new GrpcError(Code.UNAVAILABLE, `Failed to listen on ${address}: ${reason}`));
    });
  });
}

function shutdown(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => server.forceShutdown(), graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
    if (graceMs <= 0) server.forceShutdown();
  });
}

/** IPv6 literals need brackets in "host:port". */
function formatHost(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}
