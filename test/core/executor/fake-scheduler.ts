// A scripted scheduler for unit tests of the executor's scheduler-facing
// clients: a real grpc-js server on loopback serving scheduler.Scheduler,
// recording what the executor sends and letting each test decide what the
// scheduler answers.
import * as grpc from '@grpc/grpc-js';

import { grpcPackage } from '../../../src-main/core/proto/index.js';
import type {
  LeaseTaskRequest__Output,
  LeaseTaskResponse,
  ReEnqueueTaskRequest__Output,
  RegisterAndStreamWorkRequest__Output,
  RegisterAndStreamWorkResponse,
  SchedulerClient,
  SchedulerHandlers,
} from '../../../src-main/core/proto/index.js';

export type WorkCall = grpc.ServerDuplexStream<
  RegisterAndStreamWorkRequest__Output,
  RegisterAndStreamWorkResponse
>;
export type LeaseCall = grpc.ServerDuplexStream<LeaseTaskRequest__Output, LeaseTaskResponse>;

export interface FakeScheduler {
  address: string;
  /** Every RegisterAndStreamWork message, with the stream it came on (1-based). */
  received: { stream: number; at: number; request: RegisterAndStreamWorkRequest__Output }[];
  /** Metadata of each RegisterAndStreamWork stream, in order. */
  streamMetadata: grpc.Metadata[];
  /** The current RegisterAndStreamWork call. */
  work(): WorkCall | undefined;
  /** Resolves once `n` messages matching `pred` have arrived. */
  waitFor(
    pred: (r: RegisterAndStreamWorkRequest__Output) => boolean,
    n?: number,
  ): Promise<RegisterAndStreamWorkRequest__Output[]>;
  /** The LeaseTask behaviour; set by each test. */
  onLease: (call: LeaseCall) => void;
  reEnqueues: { request: ReEnqueueTaskRequest__Output; metadata: grpc.Metadata }[];
  taskExists: (taskId: string) => boolean;
  client(): SchedulerClient;
  close(): Promise<void>;
}

export async function startFakeScheduler(): Promise<FakeScheduler> {
  const server = new grpc.Server();
  let current: WorkCall | undefined;
  let streams = 0;
  const clients: grpc.Client[] = [];
  const fake: FakeScheduler = {
    address: '',
    received: [],
    streamMetadata: [],
    work: () => current,
    waitFor: async (pred, n = 1) => {
      for (;;) {
        const matches = fake.received.map((r) => r.request).filter(pred);
        if (matches.length >= n) return matches;
        await new Promise((r) => setTimeout(r, 5));
      }
    },
    onLease: (call) => call.end(),
    reEnqueues: [],
    taskExists: () => true,
    client: () => {
      const Scheduler = grpcPackage().scheduler.Scheduler;
      const client = new Scheduler(fake.address, grpc.credentials.createInsecure());
      clients.push(client);
      return client as unknown as SchedulerClient;
    },
    close: async () => {
      for (const c of clients) c.close();
      server.forceShutdown();
    },
  };
  const handlers: SchedulerHandlers = {
    RegisterAndStreamWork: (call) => {
      const stream = ++streams;
      current = call;
      fake.streamMetadata.push(call.metadata);
      call.on('data', (request: RegisterAndStreamWorkRequest__Output) =>
        fake.received.push({ stream, at: Date.now(), request }),
      );
      call.on('end', () => call.end());
      call.on('error', () => undefined);
    },
    LeaseTask: (call) => fake.onLease(call),
    TaskExists: (call, callback) =>
      callback(null, { exists: fake.taskExists(call.request.task_id) }),
    ReEnqueueTask: (call, callback) => {
      fake.reEnqueues.push({ request: call.request, metadata: call.metadata });
      callback(null, {});
    },
    ScheduleTask: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED }),
    EnqueueTaskReservation: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED }),
  };
  server.addService(grpcPackage().scheduler.Scheduler.service, handlers);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  fake.address = `127.0.0.1:${port}`;
  return fake;
}
