import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { defaultConfig, type Config } from '../../src-main/core/config.js';
import { Code, GrpcError } from '../../src-main/core/errors.js';
import {
  assignableMemoryBytes,
  assignableMilliCpu,
  goArch,
  goOs,
  macOsName,
  metadataDirectory,
  resolveIdentity,
} from '../../src-main/core/identity.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

let tmp: string;
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'idlebuild-identity-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** A default config whose data directory is a fresh subdirectory of tmp. */
async function freshConfig(edit: (e: Config['executor']) => void = () => {}): Promise<Config> {
  const home = await mkdtemp(path.join(tmp, 'home-'));
  const config = defaultConfig({ IDLEBUILD_HOME: home });
  edit(config.executor);
  return config;
}

function assertInvalid(fn: () => unknown, pattern: RegExp) {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof GrpcError, String(err));
    assert.equal(err.code, Code.INVALID_ARGUMENT);
    assert.match(err.message, pattern);
    return true;
  });
}

describe('host ID', () => {
  test('persists across restarts over the same directory and differs in a fresh one', async () => {
    const config = await freshConfig();
    const first = await resolveIdentity(config, {});
    const second = await resolveIdentity(config, {});
    assert.match(first.hostId, UUID);
    assert.equal(second.hostId, first.hostId);
    assert.notEqual(second.executorId, first.executorId, 'executor ID is per process start');

    const file = path.join(metadataDirectory(config), 'host_id');
    assert.equal((await readFile(file, 'utf8')).trim(), first.hostId);
    assert.equal(path.dirname(path.dirname(file)), path.dirname(config.executor.root_directory));

    const other = await resolveIdentity(await freshConfig(), {});
    assert.notEqual(other.hostId, first.hostId);
  });

  test('concurrent first starts agree on one host ID', async () => {
    const config = await freshConfig();
    const ids = await Promise.all([1, 2, 3, 4].map(() => resolveIdentity(config, {})));
    assert.equal(new Set(ids.map((i) => i.hostId)).size, 1);
  });

  test('executor.host_id overrides, and metadata_directory moves the file', async () => {
    const pinned = await freshConfig((e) => (e.host_id = 'rack-7'));
    assert.equal((await resolveIdentity(pinned, {})).hostId, 'rack-7');

    const dir = path.join(tmp, 'custom-metadata');
    const moved = await freshConfig((e) => (e.metadata_directory = dir));
    const { hostId } = await resolveIdentity(moved, {});
    assert.equal((await readFile(path.join(dir, 'host_id'), 'utf8')).trim(), hostId);
  });

  test('an empty host_id file is an error saying what to do', async () => {
    const config = await freshConfig();
    await mkdir(metadataDirectory(config), { recursive: true });
    await writeFile(path.join(metadataDirectory(config), 'host_id'), '\n');
    await assert.rejects(
      resolveIdentity(config, {}),
      /host_id" is empty: delete it to generate a new host ID/,
    );
  });
});

describe('hostname and pool', () => {
  test('MY_HOSTNAME wins over the OS hostname', async () => {
    const config = await freshConfig();
    assert.equal(
      (await resolveIdentity(config, { MY_HOSTNAME: 'builder-1' })).hostname,
      'builder-1',
    );
    assert.equal((await resolveIdentity(config, {})).hostname, os.hostname());
  });

  test('pool comes from config or MY_POOL and is lower-cased', async () => {
    const fromConfig = await freshConfig((e) => (e.pool = 'Linux-Big'));
    assert.equal((await resolveIdentity(fromConfig, {})).pool, 'linux-big');
    const plain = await freshConfig();
    assert.equal((await resolveIdentity(plain, { MY_POOL: 'GPU' })).pool, 'gpu');
    assert.equal((await resolveIdentity(plain, {})).pool, '');
  });

  test('pool set in both config and MY_POOL is an error naming both', async () => {
    const config = await freshConfig((e) => (e.pool = 'a'));
    await assert.rejects(resolveIdentity(config, { MY_POOL: 'b' }), (err: unknown) => {
      assert.ok(err instanceof GrpcError);
      assert.equal(err.code, Code.INVALID_ARGUMENT);
      assert.match(err.message, /executor\.pool \("a"\) and MY_POOL \("b"\)/);
      return true;
    });
  });
});

describe('resources', () => {
  const config = defaultConfig({ IDLEBUILD_HOME: '/unused' });
  const withExecutor = (e: Partial<Config['executor']>): Config => ({
    ...config,
    executor: { ...config.executor, ...e },
  });

  test('SYS_CPU accepts cores and millicpu; config wins; default is every core', () => {
    assert.equal(assignableMilliCpu(config, { SYS_CPU: '1.5' }), 1500);
    assert.equal(assignableMilliCpu(config, { SYS_CPU: '1500m' }), 1500);
    assert.equal(assignableMilliCpu(config, { SYS_CPU: '4' }), 4000);
    assert.equal(assignableMilliCpu(config, { SYS_MILLICPU: '2' }), 2000, 'deprecated, in cores');
    assert.equal(assignableMilliCpu(config, { SYS_CPU: '3', SYS_MILLICPU: '2' }), 3000);
    assert.equal(assignableMilliCpu(withExecutor({ millicpu: 750 }), { SYS_CPU: '3' }), 750);
    assert.equal(assignableMilliCpu(config, {}), os.availableParallelism() * 1000);
  });

  test('a malformed SYS_CPU or SYS_MILLICPU names the variable', () => {
    assertInvalid(() => assignableMilliCpu(config, { SYS_CPU: 'lots' }), /Invalid SYS_CPU "lots"/);
    assertInvalid(() => assignableMilliCpu(config, { SYS_CPU: '-1' }), /SYS_CPU/);
    assertInvalid(() => assignableMilliCpu(config, { SYS_CPU: '0m' }), /SYS_CPU/);
    assertInvalid(
      () => assignableMilliCpu(config, { SYS_MILLICPU: '1500m' }),
      /Invalid SYS_MILLICPU "1500m"/,
    );
  });

  test('memory comes from config, then SYS_MEMORY_BYTES, then total RAM', () => {
    assert.equal(assignableMemoryBytes(withExecutor({ memory_bytes: 1024 }), {}), 1024);
    assert.equal(assignableMemoryBytes(config, { SYS_MEMORY_BYTES: '8000000000' }), 8e9);
    assert.equal(assignableMemoryBytes(config, {}), os.totalmem());
    assertInvalid(
      () => assignableMemoryBytes(config, { SYS_MEMORY_BYTES: '8G' }),
      /Invalid SYS_MEMORY_BYTES "8G"/,
    );
  });
});

describe('platform names', () => {
  test("Node's names map to Go's", () => {
    assert.equal(goArch('x64'), 'amd64');
    assert.equal(goArch('arm64'), 'arm64');
    assert.equal(goArch('ia32'), '386');
    assert.equal(goArch('arm'), 'arm');
    assert.equal(goOs('win32'), 'windows');
    assert.equal(goOs('darwin'), 'darwin');
    assert.equal(goOs('linux'), 'linux');
  });

  test('Darwin releases map to macOS versions', () => {
    assert.equal(macOsName('19.6.0'), 'macOS 10.15');
    assert.equal(macOsName('23.4.0'), 'macOS 14');
    assert.equal(macOsName('24.1.0'), 'macOS 15');
    assert.equal(macOsName('25.0.0'), 'macOS 26');
  });

  test('the resolved identity describes this machine and version', async () => {
    const identity = await resolveIdentity(await freshConfig(), {});
    const pkg = JSON.parse(
      await readFile(new URL('../../../package.json', import.meta.url), 'utf8'),
    ) as { version: string };
    assert.equal(identity.version, pkg.version);
    assert.equal(identity.osFamily, goOs(process.platform));
    assert.equal(identity.arch, goArch(process.arch));
    assert.ok(identity.osDisplayName.length > 0);
    assert.match(identity.executorId, UUID);
    assert.ok(identity.assignableMilliCpu >= 1000);
    assert.ok(identity.assignableMemoryBytes > 0);
  });
});
