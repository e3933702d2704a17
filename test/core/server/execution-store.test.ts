// The execution store's watchers and abandon grace, with real timers kept
// short.
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { digestOf } from '../../../src-main/core/digest.js';
import {
  createExecutionStore,
  failedOperation,
  type Execution,
  type ExecutionStore,
} from '../../../src-main/core/server/execution-store.js';

const GRACE_MS = 60;
const DIGEST = digestOf(Buffer.from('action'));

describe('execution store abandon grace', () => {
  let store: ExecutionStore;
  let abandoned: string[];

  function open(): void {
    store = createExecutionStore({ abandonGraceMs: GRACE_MS });
    abandoned = [];
    store.onAbandoned((execution: Execution) => abandoned.push(execution.id));
  }
  const create = (id: string, cancelWhenAbandoned = true) =>
    store.create({ id, actionDigest: DIGEST, cacheable: true, cancelWhenAbandoned });

  afterEach(() => store.close());

  test('an execution whose last watcher leaves is abandoned after the grace', async () => {
    open();
    create('a');
    const stopFirst = store.watch('a', () => {});
    const stopSecond = store.watch('a', () => {});
    stopFirst();
    await sleep(GRACE_MS * 2);
    assert.deepEqual(abandoned, [], 'one watcher is still there');
    stopSecond();
    assert.deepEqual(abandoned, [], 'not before the grace');
    await sleep(GRACE_MS * 3);
    assert.deepEqual(abandoned, ['a']);
  });

  test('a watcher that re-attaches within the grace keeps the execution', async () => {
    open();
    create('b');
    store.watch('b', () => {})();
    await sleep(GRACE_MS / 3);
    const stop = store.watch('b', () => {});
    await sleep(GRACE_MS * 3);
    assert.deepEqual(abandoned, []);
    stop();
    await sleep(GRACE_MS * 3);
    assert.deepEqual(abandoned, ['b'], 'the grace starts again when it leaves again');
  });

  test('the same listener watching twice counts as two watchers', async () => {
    open();
    create('c');
    const watcher = () => {};
    const stopFirst = store.watch('c', watcher);
    store.watch('c', watcher);
    stopFirst();
    await sleep(GRACE_MS * 3);
    assert.deepEqual(abandoned, []);
  });

  test('an execution that completes within the grace is not abandoned', async () => {
    open();
    create('d');
    store.watch('d', () => {})();
    store.publish('d', failedOperation('d', DIGEST, { code: 0, message: '' }));
    await sleep(GRACE_MS * 3);
    assert.deepEqual(abandoned, []);
  });

  test('an execution not marked cancelWhenAbandoned is never abandoned', async () => {
    open();
    create('e', false);
    store.watch('e', () => {})();
    await sleep(GRACE_MS * 3);
    assert.deepEqual(abandoned, []);
  });

  test('an execution that never had a watcher is not abandoned', async () => {
    open();
    create('f');
    await sleep(GRACE_MS * 3);
    assert.deepEqual(abandoned, []);
  });

  test('close stops pending abandon timers', async () => {
    open();
    create('g');
    store.watch('g', () => {})();
    store.close();
    await sleep(GRACE_MS * 3);
    assert.deepEqual(abandoned, []);
  });
});
