import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import {
  connectToScheduler,
  executionNode,
  type SchedulerConnection,
  type SchedulerConnectionOptions,
} from '../../../src-main/core/executor/scheduler-client.js';
import type { Identity } from '../../../src-main/core/identity.js';
import type { EnqueueTaskReservationRequest } from '../../../src-main/core/proto/index.js';
import { startFakeScheduler, type FakeScheduler } from './fake-scheduler.js';

const IDENTITY: Identity = {
  executorId: '34c5cf7e-b3b1-4e20-b43c-3e196b30d983',
  hostId: 'host-1',
  hostname: 'worker-7',
  pool: 'Linux-Big',
  osFamily: 'linux',
  arch: 'amd64',
  osDisplayName: 'Ubuntu 24.04 LTS',
  assignableMilliCpu: 4000,
  assignableMemoryBytes: 8e9,
  version: '0.1.0',
};

function reservation(taskId: string): EnqueueTaskReservationRequest {
  return { task_id: taskId, task_size: { estimated_milli_cpu: 500 }, jwt: 'jwt-' + taskId };
}

describe('scheduler connection', () => {
  let fake: FakeScheduler;
  const open: SchedulerConnection[] = [];

  before(async () => {
    fake = await startFakeScheduler();
  });
  after(async () => {
    for (const c of open) await c.shutdown([]);
    await fake.close();
  });

  function connect(overrides: Partial<SchedulerConnectionOptions> = {}): SchedulerConnection {
    fake.received.length = 0;
    fake.streamMetadata.length = 0;
    let queueLength = 0;
    const connection = connectToScheduler({
      client: fake.client(),
      node: () =>
        executionNode(IDENTITY, {
          supportedIsolationTypes: ['none'],
          queueLength: queueLength++,
          activeCount: 0,
        }),
      onReservation: () => undefined,
      reconnectMinMs: 50,
      ...overrides,
    });
    open.push(connection);
    return connection;
  }

  test('registers at once with the ExecutionNode and the API key header', async () => {
    const connection = connect({ apiKey: 'k-123' });
    const [first] = await fake.waitFor((r) => r.register_executor_request !== null);
    const node = first.register_executor_request!.node!;
    assert.equal(node.host, 'worker-7');
    assert.equal(node.port, 1);
    assert.equal(node.pool, 'linux-big');
    assert.equal(node.os_family, 'linux');
    assert.equal(node.arch, 'amd64');
    assert.equal(node.executor_id, IDENTITY.executorId);
    assert.equal(node.executor_host_id, 'host-1');
    assert.equal(node.assignable_milli_cpu, 4000);
    assert.equal(node.assignable_memory_bytes, 8e9);
    assert.deepEqual(node.supported_isolation_types, ['none']);
    assert.equal(node.os_display_name, 'Ubuntu 24.04 LTS');
    assert.equal(node.supports_proactive_cancellation, true);
    assert.deepEqual(fake.streamMetadata[0].get('x-buildbuddy-api-key'), ['k-123']);
    await sleep(250); // registered once the stream stays open for 200 ms
    assert.equal(connection.connected(), true);
    await connection.shutdown([]);
  });

  test('sends no API key header when none is configured', async () => {
    const connection = connect();
    await fake.waitFor((r) => r.register_executor_request !== null);
    assert.deepEqual(fake.streamMetadata[0].get('x-buildbuddy-api-key'), []);
    await connection.shutdown([]);
  });

  test('heartbeats re-send the registration with fresh queue counts', async () => {
    const connection = connect({ heartbeatMs: 40 });
    const start = Date.now();
    const registrations = await fake.waitFor((r) => r.register_executor_request !== null, 4);
    const elapsed = Date.now() - start;
    assert.ok(elapsed >= 100 && elapsed < 1000, `4 registrations took ${elapsed} ms`);
    const lengths = registrations.map(
      (r) => r.register_executor_request!.node!.current_queue_length,
    );
    assert.deepEqual(lengths.slice(0, 4), [0, 1, 2, 3]);
    await connection.shutdown([]);
  });

  test('every reservation is acknowledged at once, duplicates too', async () => {
    const seen: string[] = [];
    const connection = connect({ onReservation: (r) => seen.push(r.task_id) });
    await fake.waitFor((r) => r.register_executor_request !== null);
    for (const id of ['t1', 't1', 't2'])
      fake.work()!.write({ enqueue_task_reservation_request: reservation(id) });
    const acks = await fake.waitFor((r) => r.enqueue_task_reservation_response !== null, 3);
    assert.deepEqual(
      acks.map((a) => a.enqueue_task_reservation_response!.task_id),
      ['t1', 't1', 't2'],
    );
    assert.deepEqual(seen, ['t1', 't1', 't2']);
    await connection.shutdown([]);
  });

  test('reconnects and re-registers after the scheduler drops the stream', async () => {
    const connection = connect();
    await fake.waitFor((r) => r.register_executor_request !== null);
    fake
      .work()!
      .emit('error', { code: grpc.status.UNAVAILABLE, details: 'server is shutting down' });
    await sleep(10);
    assert.equal(connection.connected(), false, 'a stream that ended at once never counted as up');
    await fake.waitFor((r) => r.register_executor_request !== null, 2);
    assert.deepEqual(
      [...new Set(fake.received.map((r) => r.stream))].length,
      2,
      'the second registration came on a new stream',
    );
    await sleep(250); // registered once the stream stays open for 200 ms
    assert.equal(connection.connected(), true);
    await connection.shutdown([]);
  });

  test('a message with no known field restarts the stream', async () => {
    const connection = connect();
    await fake.waitFor((r) => r.register_executor_request !== null);
    const streamsBefore = fake.streamMetadata.length;
    fake.work()!.write({});
    await fake.waitFor((r) => r.register_executor_request !== null, 2);
    assert.equal(fake.streamMetadata.length, streamsBefore + 1);
    await connection.shutdown([]);
  });

  test('a cancelled reservation is passed on', async () => {
    const cancelled: string[] = [];
    const connection = connect({ onCancel: (id) => cancelled.push(id) });
    await fake.waitFor((r) => r.register_executor_request !== null);
    fake.work()!.write({ cancel_task_reservation_request: { task_id: 't9' } });
    await sleep(50);
    assert.deepEqual(cancelled, ['t9']);
    await connection.shutdown([]);
  });

  test('asks for more work while idle and waits the delay the scheduler answers', async () => {
    let idle = 0;
    const connection = connect({ askForWorkMs: 40, idleForMs: () => idle });
    await fake.waitFor((r) => r.register_executor_request !== null);
    await sleep(100);
    assert.equal(
      fake.received.filter((r) => r.request.ask_for_more_work_request !== null).length,
      0,
      'not idle long enough yet',
    );
    idle = 60_000;
    await fake.waitFor((r) => r.ask_for_more_work_request !== null);
    fake.work()!.write({ ask_for_more_work_response: { delay: { seconds: 0, nanos: 300e6 } } });
    await sleep(20);
    const asksBefore = fake.received.filter((r) => r.request.ask_for_more_work_request).length;
    await sleep(200);
    const asksAfter = fake.received.filter((r) => r.request.ask_for_more_work_request).length;
    assert.equal(asksAfter, asksBefore, 'no ask during the 300 ms delay');
    await fake.waitFor((r) => r.ask_for_more_work_request !== null, asksBefore + 1);
    await connection.shutdown([]);
  });

  test('shutdown sends the queued task IDs, closes the stream and stays closed', async () => {
    const connection = connect({ heartbeatMs: 30 });
    await fake.waitFor((r) => r.register_executor_request !== null);
    await connection.shutdown(['q1', 'q2']);
    const [notice] = await fake.waitFor((r) => r.shutting_down_request !== null);
    assert.deepEqual(notice.shutting_down_request!.task_id, ['q1', 'q2']);
    assert.equal(connection.connected(), false);
    const count = fake.received.length;
    await sleep(150);
    assert.equal(fake.received.length, count, 'no heartbeat or reconnect after shutdown');
  });

  test('taskExists asks the scheduler with the reservation JWT', async () => {
    const connection = connect();
    fake.taskExists = (id) => id === 'alive';
    assert.equal(await connection.taskExists('alive', 'jwt'), true);
    assert.equal(await connection.taskExists('gone', 'jwt'), false);
    await connection.shutdown([]);
  });
});
