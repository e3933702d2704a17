// Config and identity for executors started by tests.
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';

import { defaultConfig, type Config, type ExecutorConfig } from '../../../src-main/core/config.js';
import type { Identity } from '../../../src-main/core/identity.js';

/** An identity with a fresh executor ID and 2 CPUs / 4 GB to assign. */
export function testIdentity(hostId: string, overrides: Partial<Identity> = {}): Identity {
  return {
    executorId: randomUUID(),
    hostId,
    hostname: `${hostId}.test`,
    pool: '',
    osFamily: 'linux',
    arch: 'amd64',
    osDisplayName: 'Test OS',
    assignableMilliCpu: 2000,
    assignableMemoryBytes: 4e9,
    version: '0.0.0-test',
    ...overrides,
  };
}

/** Defaults, with the build root and file cache under `dir`, talking to `address` in plaintext. */
export function testConfig(
  dir: string,
  address: string,
  overrides: Partial<ExecutorConfig> = {},
): Config {
  const config = defaultConfig();
  Object.assign(config.executor, {
    app_target: `grpc://${address}`,
    root_directory: join(dir, 'build'),
    local_cache_directory: join(dir, 'filecache'),
    ...overrides,
  });
  return config;
}
