import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { ServerCapabilities__Output } from '../../../src-main/core/proto/index.js';
import { startStorageServer, unary, type StorageHarness } from './storage-harness.js';

let h: StorageHarness;
before(async () => {
  h = await startStorageServer({ execEnabled: true });
});
after(() => h.close());

const getCapabilities = (instance_name = '') =>
  unary<ServerCapabilities__Output>((cb) => h.capabilities.GetCapabilities({ instance_name }, cb));

describe('Capabilities service', () => {
  test('advertises SHA256 caching with updates, a 4 MB batch limit and no compressors', async () => {
    const cache = (await getCapabilities()).cache_capabilities;
    assert.deepEqual(cache?.digest_functions, ['SHA256']);
    assert.equal(cache?.action_cache_update_capabilities?.update_enabled, true);
    assert.equal(cache?.max_batch_total_size_bytes, 4_000_000);
    assert.equal(cache?.symlink_absolute_path_strategy, 'DISALLOWED');
    assert.deepEqual(cache?.supported_compressors, []);
    assert.deepEqual(cache?.supported_batch_update_compressors, []);
    assert.equal(cache?.split_blob_support, false);
  });

  test('advertises SHA256 execution in both the legacy and the list field', async () => {
    const exec = (await getCapabilities('any/instance')).execution_capabilities;
    assert.equal(exec?.exec_enabled, true);
    assert.equal(exec?.digest_function, 'SHA256');
    assert.deepEqual(exec?.digest_functions, ['SHA256']);
  });

  test('the API version range 2.0 to 2.3 includes what Bazel 4 speaks (2.0)', async () => {
    const caps = await getCapabilities();
    assert.deepEqual([caps.low_api_version?.major, caps.low_api_version?.minor], [2, 0]);
    assert.deepEqual([caps.high_api_version?.major, caps.high_api_version?.minor], [2, 3]);
  });

  test('a cache-only server says that it does not execute', async () => {
    const cacheOnly = await startStorageServer({ execEnabled: false });
    try {
      const caps = await unary<ServerCapabilities__Output>((cb) =>
        cacheOnly.capabilities.GetCapabilities({}, cb),
      );
      assert.equal(caps.execution_capabilities?.exec_enabled, false);
    } finally {
      await cacheOnly.close();
    }
  });
});
