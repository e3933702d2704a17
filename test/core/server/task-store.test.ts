import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { createTaskStore, type TaskStore } from '../../../src-main/core/server/task-store.js';

const OPTS = { leaseDurationMs: 100, leaseGraceMs: 100, reconnectGraceMs: 50, maxAttempts: 5 };

function storeWithTask(id = 't1'): TaskStore {
  const store = createTaskStore(OPTS);
  store.add({ id, serializedTask: Buffer.from('task'), metadata: {}, size: {} });
  return store;
}

function codeOf(fn: () => unknown): number | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return (err as { code: number }).code;
  }
}

describe('Task store', () => {
  test('the first claim wins and a second claim is NOT_FOUND', () => {
    const store = storeWithTask();
    const task = store.claim('t1', Symbol('a'), '', 0);
    assert.match(task.lease!.leaseId, /^[A-Za-z0-9]{20}$/);
    assert.equal(
      codeOf(() => store.claim('t1', Symbol('b'), '', 0)),
      grpc.status.NOT_FOUND,
    );
    assert.equal(
      codeOf(() => store.claim('missing', Symbol('c'), '', 0)),
      grpc.status.NOT_FOUND,
    );
    assert.deepEqual(store.unclaimed(), []);
  });

  test('a lease expires after lease + grace without keep-alives', () => {
    const store = storeWithTask();
    const holder = Symbol('a');
    store.claim('t1', holder, '', 0);
    store.keepAlive('t1', holder, 150);
    assert.deepEqual(store.expired(300), []);
    assert.deepEqual(store.expired(351), [{ id: 't1', holder }]);
  });

  test('within the reconnect window only the lost lease token re-claims, without an attempt', () => {
    const store = storeWithTask();
    const first = store.claim('t1', Symbol('a'), '', 0);
    const leaseId = first.lease!.leaseId;
    assert.equal(
      store.release('t1', first.lease!.holder, 'stream broke', true, 10).kind,
      'requeued',
    );
    assert.equal(store.get('t1')!.attempts, 1);

    assert.equal(
      codeOf(() => store.claim('t1', Symbol('b'), '', 20)),
      grpc.status.NOT_FOUND,
    );
    const again = store.claim('t1', Symbol('a2'), leaseId, 30);
    assert.equal(again.lease!.leaseId, leaseId);
    assert.equal(again.attempts, 0);
  });

  test('after the reconnect window anyone may claim', () => {
    const store = storeWithTask();
    const holder = Symbol('a');
    store.claim('t1', holder, '', 0);
    store.release('t1', holder, 'stream broke', true, 10);
    assert.ok(store.claim('t1', Symbol('b'), '', 61).lease);
  });

  test('the fifth failed attempt fails the task and names the last failure', () => {
    const store = storeWithTask();
    let outcome;
    for (let i = 1; i <= 5; i++) {
      const holder = Symbol(`h${i}`);
      store.claim('t1', holder, '', i * 100);
      outcome = store.release('t1', holder, `failure ${i}`, false, i * 100);
    }
    assert.deepEqual(outcome, {
      kind: 'failed',
      message: 'Task "t1" already attempted 5 times. Last failure: failure 5',
    });
    assert.equal(store.get('t1'), undefined);
  });

  test('a release by a stale holder or wrong lease ID changes nothing', () => {
    const store = storeWithTask();
    store.claim('t1', Symbol('a'), '', 0);
    assert.equal(store.release('t1', Symbol('other'), 'x', true, 0).kind, 'stale');
    assert.equal(store.release('t1', { leaseId: 'wrong' }, 'x', false, 0).kind, 'stale');
    assert.equal(store.get('t1')!.attempts, 0);
  });

  test('a completed task is deleted when its lease ends instead of re-enqueued', () => {
    const store = storeWithTask();
    const holder = Symbol('a');
    store.claim('t1', holder, '', 0);
    store.markCompleted('t1');
    assert.equal(store.release('t1', holder, 'stream broke', true, 0).kind, 'deleted');
    assert.equal(store.size(), 0);
  });

  test('finalize deletes the task only for its holder', () => {
    const store = storeWithTask();
    const holder = Symbol('a');
    store.claim('t1', holder, '', 0);
    assert.equal(store.finalize('t1', Symbol('b')), false);
    assert.equal(store.finalize('t1', holder), true);
    assert.equal(store.size(), 0);
  });

  test('a retry=false task handed back fails at once, but survives a lost lease', () => {
    const store = createTaskStore(OPTS);
    store.add({
      id: 't1',
      serializedTask: Buffer.from('x'),
      metadata: {},
      size: {},
      noRetry: true,
    });
    const a = Symbol('a');
    store.claim('t1', a, '', 0);
    assert.equal(store.release('t1', a, 'stream broke', true, 0).kind, 'requeued');
    const b = Symbol('b');
    store.claim('t1', b, '', 100);
    const outcome = store.release('t1', b, 'image pull failed', false, 100);
    assert.equal(outcome.kind, 'failed');
    assert.match((outcome as { message: string }).message, /retry=false.*image pull failed/);
  });
});
