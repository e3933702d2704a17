import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, test } from 'node:test';

import {
  createTaskQueue,
  DEFAULT_TASK_SIZE,
  type TaskQueue,
} from '../../../src-main/core/executor/task-queue.js';
import type { EnqueueTaskReservationRequest__Output } from '../../../src-main/core/proto/index.js';

const CAPACITY = { milliCpu: 4000, memoryBytes: 8e9 };

function reservation(
  taskId: string,
  opts: { cpu?: number; mem?: number; priority?: number; group?: string; delayMs?: number } = {},
): EnqueueTaskReservationRequest__Output {
  return {
    task_id: taskId,
    task_size: {
      estimated_milli_cpu: opts.cpu ?? 1000,
      estimated_memory_bytes: opts.mem ?? 1e9,
      estimated_free_disk_bytes: 0,
      custom_resources: [],
      disk_read_bps: 0,
      disk_write_bps: 0,
      disk_read_iops: 0,
      disk_write_iops: 0,
    },
    scheduling_metadata: {
      priority: opts.priority ?? 0,
      task_group_id: opts.group ?? 'GR1',
    } as EnqueueTaskReservationRequest__Output['scheduling_metadata'],
    executor_id: '',
    delay: opts.delayMs ? { seconds: 0, nanos: opts.delayMs * 1e6 } : null,
    jwt: '',
    trace_metadata: null,
  };
}

function takeAll(queue: TaskQueue): string[] {
  const ids: string[] = [];
  for (let claim = queue.take(); claim; claim = queue.take())
    ids.push(claim.reservation.request.task_id);
  return ids;
}

describe('task queue', () => {
  test('a duplicate reservation is ignored while the first is queued', () => {
    const queue = createTaskQueue({ capacity: CAPACITY });
    assert.equal(queue.enqueue(reservation('a')), true);
    assert.equal(queue.enqueue(reservation('a')), false);
    assert.equal(queue.length(), 1);
    queue.close();
  });

  test('lower priority runs first and equal priorities run in arrival order', () => {
    const queue = createTaskQueue({ capacity: { milliCpu: 100_000, memoryBytes: 1e12 } });
    queue.enqueue(reservation('late', { priority: 5 }));
    queue.enqueue(reservation('first', { priority: -1 }));
    queue.enqueue(reservation('second', { priority: 0 }));
    queue.enqueue(reservation('third', { priority: 0 }));
    assert.deepEqual(takeAll(queue), ['first', 'second', 'third', 'late']);
    queue.close();
  });

  test('task groups are served round-robin', () => {
    const queue = createTaskQueue({ capacity: { milliCpu: 100_000, memoryBytes: 1e12 } });
    for (const id of ['a1', 'a2', 'a3']) queue.enqueue(reservation(id, { group: 'A' }));
    for (const id of ['b1', 'b2']) queue.enqueue(reservation(id, { group: 'B' }));
    assert.deepEqual(takeAll(queue), ['a1', 'b1', 'a2', 'b2', 'a3']);
    queue.close();
  });

  test('admission waits for free capacity and resumes on release', () => {
    const queue = createTaskQueue({ capacity: CAPACITY });
    let runnable = 0;
    queue.onRunnable(() => runnable++);
    queue.enqueue(reservation('a', { cpu: 3000 }));
    queue.enqueue(reservation('b', { cpu: 2000 }));
    const a = queue.take();
    assert.equal(a?.reservation.request.task_id, 'a');
    assert.equal(queue.take(), undefined, 'b does not fit next to a');
    assert.equal(queue.active(), 1);
    const before = runnable;
    a!.release();
    a!.release();
    assert.equal(runnable, before + 1, 'release notifies once');
    assert.equal(queue.take()?.reservation.request.task_id, 'b');
    queue.close();
  });

  test('memory is admitted like CPU', () => {
    const queue = createTaskQueue({ capacity: CAPACITY });
    queue.enqueue(reservation('a', { cpu: 100, mem: 5e9 }));
    queue.enqueue(reservation('b', { cpu: 100, mem: 5e9 }));
    assert.ok(queue.take());
    assert.equal(queue.take(), undefined);
    queue.close();
  });

  test('a task bigger than the whole capacity runs alone instead of waiting forever', () => {
    const queue = createTaskQueue({ capacity: CAPACITY });
    queue.enqueue(reservation('small', { cpu: 1000 }));
    queue.enqueue(reservation('huge', { cpu: 64_000 }));
    const small = queue.take()!;
    assert.equal(queue.take(), undefined, 'huge waits while something runs');
    small.release();
    assert.equal(queue.take()?.reservation.request.task_id, 'huge');
    queue.close();
  });

  test('a reservation without a task size is admitted at the default task size', () => {
    const queue = createTaskQueue({ capacity: { milliCpu: 1000, memoryBytes: 8e9 } });
    queue.enqueue(reservation('a', { cpu: 0, mem: 0 }));
    queue.enqueue(reservation('b', { cpu: 0, mem: 0 }));
    assert.deepEqual(queue.take()?.reservation.size, DEFAULT_TASK_SIZE);
    assert.equal(queue.take(), undefined, 'two default-sized tasks exceed 1000 milliCPU');
    queue.close();
  });

  test('a delayed reservation becomes runnable only after its delay', async () => {
    const queue = createTaskQueue({ capacity: CAPACITY });
    let notified = false;
    queue.onRunnable(() => (notified = true));
    queue.enqueue(reservation('d', { delayMs: 150 }));
    assert.equal(queue.take(), undefined);
    assert.equal(queue.enqueue(reservation('d')), false, 'a delayed reservation is a duplicate');
    assert.deepEqual(queue.queuedTaskIds(), ['d']);
    await sleep(60);
    assert.equal(queue.take(), undefined, 'still delayed');
    await sleep(150);
    assert.equal(notified, true);
    assert.equal(queue.take()?.reservation.request.task_id, 'd');
    queue.close();
  });

  test('cancel removes a queued or a delayed reservation', () => {
    const queue = createTaskQueue({ capacity: CAPACITY });
    queue.enqueue(reservation('q'));
    queue.enqueue(reservation('d', { delayMs: 10_000 }));
    assert.equal(queue.cancel('q'), true);
    assert.equal(queue.cancel('d'), true);
    assert.equal(queue.cancel('unknown'), false);
    assert.equal(queue.length(), 0);
    queue.close();
  });

  test('trimming drops reservations whose task no longer exists', async () => {
    const gone = new Set(['a', 'b']);
    const asked: string[] = [];
    const queue = createTaskQueue({
      capacity: CAPACITY,
      trimIntervalMs: 30,
      taskExists: async (r) => {
        asked.push(r.request.task_id);
        return !gone.has(r.request.task_id);
      },
    });
    for (const id of ['a', 'b', 'c', 'd']) queue.enqueue(reservation(id));
    await sleep(100);
    assert.deepEqual(queue.queuedTaskIds(), ['c', 'd']);
    assert.ok(!asked.includes('d'), 'trimming stops at the first task that exists');
    queue.close();
  });

  test('excess capacity is tracked from the last time usage dropped below the threshold', async () => {
    const queue = createTaskQueue({ capacity: CAPACITY });
    await sleep(20);
    assert.ok(queue.idleForMs() >= 15);
    queue.enqueue(reservation('big', { cpu: 2000 }));
    const claim = queue.take()!;
    assert.equal(queue.idleForMs(), 0, 'half the CPU is above the 40% threshold');
    claim.release();
    assert.ok(queue.idleForMs() < 15);
    queue.close();
  });

  test('close returns the waiting task IDs and stops taking', () => {
    const queue = createTaskQueue({ capacity: CAPACITY });
    queue.enqueue(reservation('a'));
    queue.enqueue(reservation('b', { delayMs: 10_000 }));
    assert.deepEqual(queue.close().sort(), ['a', 'b']);
    assert.equal(queue.take(), undefined);
    assert.equal(queue.enqueue(reservation('c')), false);
  });
});
