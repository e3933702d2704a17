// The executor as a whole: registration, stop(), and an executor process
// killed in the middle of an action.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, afterEach, before, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { startExecutor, type Executor } from '../../../src-main/core/executor/executor.js';
import type { Operation__Output } from '../../../src-main/core/proto/index.js';
import { startServer, type EmbeddedServer } from '../../../src-main/core/server/server.js';
import { testConfig, testIdentity } from './executor-harness.js';
import { startFakeScheduler } from './fake-scheduler.js';
import { progressOf, ReapiClient } from './reapi-client.js';

const CHILD = new URL('./executor-child.js', import.meta.url).pathname;
const SLOW_ACTION = {
  args: ['sh', '-c', 'sleep 2; echo done > out'],
  outputPaths: ['out'],
};

/** Starts an executor process and waits until it has registered. */
async function spawnExecutor(address: string, dir: string, hostId: string) {
  const child = spawn(process.execPath, [CHILD, address, dir, hostId], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => chunk.toString().includes('ready') && resolve());
    child.once('exit', (code) => reject(new Error(`Executor process exited with ${code}`)));
  });
  return child;
}

const running = (op: Operation__Output) => progressOf(op) === 'EXECUTING_COMMAND';

describe('executor', () => {
  let dir: string;
  let server: EmbeddedServer;
  let client: ReapiClient;
  const executors: Executor[] = [];
  const children: ChildProcess[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'idlebuild-executor-'));
    server = await startServer({
      port: 0,
      dataDirectory: join(dir, 'server'),
      leaseDurationMs: 500,
      leaseGraceMs: 500,
      reconnectGraceMs: 200,
    });
    client = new ReapiClient(server.address);
  });
  afterEach(async () => {
    for (const e of executors.splice(0)) await e.stop({ graceMs: 0 });
    for (const c of children.splice(0)) c.kill('SIGKILL');
  });
  after(async () => {
    client.close();
    await server.close(0);
    await rm(dir, { recursive: true, force: true });
  });

  test('an executor killed while running its action: another executor completes it', async () => {
    const first = await spawnExecutor(server.address, join(dir, 'a'), 'host-a');
    children.push(first);
    const action = await client.uploadAction({ ...SLOW_ACTION, files: { 'kill.txt': 'kill' } });

    // SIGKILL the first executor once the command runs, then start another.
    let killed = false;
    const execution = client.execute(action, {
      onOperation: (op) => {
        if (!running(op) || killed) return;
        killed = first.kill('SIGKILL');
        void startExecutor({
          config: testConfig(join(dir, 'b'), server.address),
          identity: testIdentity('host-b'),
        }).then((e) => executors.push(e));
      },
    });

    const { response } = await execution;
    assert.equal(killed, true, 'the first executor ran the command and was killed');
    assert.equal(response.status?.code ?? 0, grpc.status.OK);
    assert.equal(response.result!.exit_code, 0);
    assert.equal(response.result!.execution_metadata!.worker, 'host-b');
    assert.equal(await client.read(response.result!.output_files[0].digest), 'done\n');
  });

  test('stop hands a running task back and another executor completes it', async () => {
    const first = await startExecutor({
      config: testConfig(join(dir, 'c'), server.address),
      identity: testIdentity('host-c'),
    });
    await until(() => first.snapshot().connected);
    const action = await client.uploadAction({ ...SLOW_ACTION, files: { 'stop.txt': 'stop' } });

    let stopped: Promise<void> | undefined;
    const execution = client.execute(action, {
      onOperation: (op) => {
        if (!running(op) || stopped) return;
        stopped = first.stop({ graceMs: 100 }).then(async () => {
          executors.push(
            await startExecutor({
              config: testConfig(join(dir, 'd'), server.address),
              identity: testIdentity('host-d'),
            }),
          );
        });
      },
    });

    const { response } = await execution;
    assert.ok(stopped, 'the first executor ran the command');
    await stopped;
    assert.equal(first.snapshot().active, 0);
    assert.equal(first.snapshot().completed + first.snapshot().failed, 0, 'nothing published');
    assert.equal(response.status?.code ?? 0, grpc.status.OK);
    assert.equal(response.result!.execution_metadata!.worker, 'host-d');
  });

  test('stop returns queued reservations to the scheduler', async () => {
    const fake = await startFakeScheduler();
    const executor = await startExecutor({
      config: testConfig(join(dir, 'e'), fake.address),
      identity: testIdentity('host-e', { assignableMilliCpu: 1000 }),
    });
    // The claim of the first task stays unanswered, so the second stays queued.
    fake.onLease = (call) => call.on('error', () => undefined);
    const [registration] = await fake.waitFor((r) => r.register_executor_request !== null);
    assert.deepEqual(registration.register_executor_request!.node!.supported_isolation_types, [
      'none',
    ]);
    for (const id of ['t1', 't2'])
      fake.work()!.write({
        enqueue_task_reservation_request: { task_id: id, task_size: { estimated_milli_cpu: 1000 } },
      });
    await fake.waitFor((r) => r.enqueue_task_reservation_response !== null, 2);
    await until(() => executor.snapshot().active === 1 && executor.snapshot().queueLength === 1);

    const started = Date.now();
    await executor.stop({ graceMs: 50 });
    assert.ok(Date.now() - started < 3_000, 'stop does not wait for the unanswered claim');
    const [notice] = await fake.waitFor((r) => r.shutting_down_request !== null);
    assert.deepEqual(notice.shutting_down_request!.task_id, ['t2']);
    await fake.close();
  });
});

async function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('Condition not met in time');
    await sleep(10);
  }
}
