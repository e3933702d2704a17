import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  CONFIG_KEYS,
  dataDirectory,
  defaultConfig,
  loadConfigFile,
  parseConfig,
  redactConfig,
} from '../../src-main/core/config.js';
import { Code, GrpcError } from '../../src-main/core/errors.js';

const ENV = { IDLEBUILD_HOME: '/data/idlebuild', HOME: '/home/ada' };
const SRC = '/etc/x.yaml';

/** Asserts that parsing fails with INVALID_ARGUMENT and returns the message. */
function parseError(text: string, env: NodeJS.ProcessEnv = ENV): string {
  try {
    parseConfig(text, env, SRC);
  } catch (err) {
    assert.ok(err instanceof GrpcError, `not a GrpcError: ${String(err)}`);
    assert.equal(err.code, Code.INVALID_ARGUMENT);
    assert.ok(err.message.startsWith(`Invalid config ${SRC}: `), err.message);
    return err.message;
  }
  assert.fail(`parsed without error:\n${text}`);
}

describe('defaults', () => {
  test('running with no file uses Idlebuild defaults under the data directory', () => {
    const config = defaultConfig(ENV, 'linux');
    assert.equal(config.listen, '127.0.0.1');
    assert.equal(config.port, 8080);
    assert.equal(config.monitoring_port, 9090);
    assert.equal(config.max_shutdown_duration, 25_000);
    assert.equal(config.server_type, 'prod-buildbuddy-executor');
    assert.equal(config.executor.app_target, '');
    assert.equal(config.executor.root_directory, '/data/idlebuild/remote_build');
    assert.equal(config.executor.local_cache_directory, '/data/idlebuild/filecache');
    assert.equal(config.executor.local_cache_size_bytes, 1_000_000_000);
    assert.equal(config.executor.default_task_timeout, 8 * 3_600_000);
    assert.equal(config.executor.max_task_timeout, 24 * 3_600_000);
    assert.equal(config.executor.check_action_result_before_execution, true);
    assert.equal(config.executor.grpc_client_type, 'executor');
    assert.equal(config.executor.excess_capacity_threshold, 0.4);
  });

  test('an empty file and an empty executor block mean all defaults', () => {
    assert.deepEqual(parseConfig('', ENV, SRC), defaultConfig(ENV));
    assert.deepEqual(parseConfig('# nothing\nexecutor:\n', ENV, SRC), defaultConfig(ENV));
  });

  test('a key with no value keeps its default', () => {
    const config = parseConfig('port:\nexecutor:\n  pool:\n', ENV, SRC);
    assert.equal(config.port, 8080);
    assert.equal(config.executor.pool, '');
  });

  test('data directory follows each OS convention', () => {
    assert.equal(dataDirectory({ HOME: '/home/ada' }, 'linux'), '/home/ada/.cache/idlebuild');
    assert.equal(
      dataDirectory({ HOME: '/home/ada', XDG_CACHE_HOME: '/xdg' }, 'linux'),
      '/xdg/idlebuild',
    );
    assert.equal(
      dataDirectory({ HOME: '/Users/ada' }, 'darwin'),
      '/Users/ada/Library/Caches/idlebuild',
    );
    assert.equal(
      dataDirectory({ LOCALAPPDATA: 'C:\\Users\\ada\\AppData\\Local' }, 'win32'),
      'C:\\Users\\ada\\AppData\\Local\\idlebuild',
    );
    assert.equal(dataDirectory({ IDLEBUILD_HOME: '/srv/ib', HOME: '/x' }, 'darwin'), '/srv/ib');
  });
});

describe('parsing', () => {
  test("BuildBuddy's documented executor config parses unchanged", () => {
    const config = parseConfig(
      [
        'executor:',
        '  app_target: "grpcs://your.buildbuddy.install:443"',
        '  root_directory: "/buildbuddy/remotebuilds/"',
        '  local_cache_directory: "/buildbuddy/filecache/"',
        '  local_cache_size_bytes: 5000000000',
        '  docker_socket: /var/run/docker.sock',
      ].join('\n'),
      ENV,
      SRC,
    );
    assert.equal(config.executor.app_target, 'grpcs://your.buildbuddy.install:443');
    assert.equal(config.executor.root_directory, '/buildbuddy/remotebuilds');
    assert.equal(config.executor.local_cache_size_bytes, 5_000_000_000);
    assert.equal(config.executor.docker_socket, '/var/run/docker.sock');
    assert.equal(config.executor.millicpu, 0);
  });

  test('durations accept Go syntax and numbers of seconds', () => {
    const config = parseConfig(
      [
        'max_shutdown_duration: 1m30s',
        'executor:',
        '  default_task_timeout: 2h',
        '  task_progress_publish_interval: 30',
        '  queue_trim_interval: -1s',
        '  max_termination_grace_period: 500ms',
      ].join('\n'),
      ENV,
      SRC,
    );
    assert.equal(config.max_shutdown_duration, 90_000);
    assert.equal(config.executor.default_task_timeout, 7_200_000);
    assert.equal(config.executor.task_progress_publish_interval, 30_000);
    assert.equal(config.executor.queue_trim_interval, -1000);
    assert.equal(config.executor.max_termination_grace_period, 500);
  });

  test('a bad duration names the key', () => {
    assert.match(
      parseError('executor:\n  default_task_timeout: soon\n'),
      /executor\.default_task_timeout: Invalid duration "soon"/,
    );
    assert.match(
      parseError('executor:\n  default_task_timeout: 0s\n'),
      /executor\.default_task_timeout: must be greater than 0ms/,
    );
  });

  test('relative and ~ paths become absolute', () => {
    const config = parseConfig(
      'executor:\n  root_directory: build\n  local_cache_directory: ~/cache\n',
      ENV,
      SRC,
    );
    assert.equal(config.executor.root_directory, path.resolve('build'));
    assert.equal(config.executor.local_cache_directory, '/home/ada/cache');
  });

  test('labels and extra_env_vars keep their shape', () => {
    const config = parseConfig(
      'executor:\n  labels: {team: infra}\n  extra_env_vars: ["A=1", "PATH"]\n',
      ENV,
      SRC,
    );
    assert.deepEqual(config.executor.labels, { team: 'infra' });
    assert.deepEqual(config.executor.extra_env_vars, ['A=1', 'PATH']);
  });
});

describe('environment expansion', () => {
  test('${NAME} and $NAME expand before parsing, so numbers stay numbers', () => {
    const config = parseConfig(
      'executor:\n  api_key: ${BB_KEY}\n  pool: $POOL\n  millicpu: ${CPU}\n',
      { ...ENV, BB_KEY: 'k123', POOL: 'gpu', CPU: '4000' },
      SRC,
    );
    assert.equal(config.executor.api_key, 'k123');
    assert.equal(config.executor.pool, 'gpu');
    assert.equal(config.executor.millicpu, 4000);
  });

  test('a variable set to an empty string expands to nothing', () => {
    const config = parseConfig('executor:\n  region: "${R}"\n', { ...ENV, R: '' }, SRC);
    assert.equal(config.executor.region, '');
  });

  test('an unset variable is an error naming the variable and line', () => {
    const message = parseError('port: 8080\nexecutor:\n  api_key: ${BB_API_KEY}\n');
    assert.match(message, /line 3: environment variable "BB_API_KEY" is not set; set it/);
  });

  test('an unset variable in a full-line comment is ignored', () => {
    const config = parseConfig('# export ${NOT_SET}\nport: 81\n', ENV, SRC);
    assert.equal(config.port, 81);
  });

  test('${SECRET:...} is rejected with what to do instead', () => {
    const message = parseError('executor:\n  api_key: ${SECRET:bb_key}\n');
    assert.match(message, /line 2: "\$\{SECRET:bb_key\}" is not supported/);
    assert.match(message, /environment variable/);
  });
});

describe('validation errors', () => {
  test('an invalid type names the key and the value', () => {
    assert.equal(
      parseError('executor:\n  millicpu: lots\n'),
      'Invalid config /etc/x.yaml: executor.millicpu: expected a number, got "lots"',
    );
    assert.match(
      parseError('executor:\n  enable_podman: "yes"\n'),
      /executor\.enable_podman: expected true or false, got "yes"/,
    );
    assert.match(parseError('port: 70000\n'), /port: must be at most 65535, got 70000/);
    assert.match(
      parseError('executor:\n  default_isolation_type: firecracker\n'),
      /executor\.default_isolation_type: expected one of .*"docker".*got "firecracker"/,
    );
  });

  test('an unknown key suggests the closest supported key', () => {
    assert.match(
      parseError('executor:\n  milicpu: 2000\n'),
      /unknown config key "executor\.milicpu" \(did you mean "executor\.millicpu"\?\)/,
    );
    assert.match(
      parseError('millicpu: 2000\n'),
      /unknown config key "millicpu" \(did you mean "executor\.millicpu"\?\)/,
    );
    assert.match(
      parseError('executor:\n  zzzzzz: 1\n'),
      /unknown config key "executor\.zzzzzz"; remove it/,
    );
  });

  test('a BuildBuddy key Idlebuild does not implement says so', () => {
    assert.match(
      parseError('executor:\n  enable_firecracker: true\n'),
      /"executor\.enable_firecracker" is a BuildBuddy setting that Idlebuild does not support/,
    );
  });

  test('every problem is reported at once', () => {
    const message = parseError('port: x\nexecutor:\n  millicpu: y\n  bogus_key: 1\n');
    assert.match(message, /port: expected a number/);
    assert.match(message, /executor\.millicpu: expected a number/);
    assert.match(message, /executor\.bogus_key/);
  });

  test('YAML syntax errors and non-map documents name the line', () => {
    assert.match(parseError('port: 1\nport: 2\n'), /YAML error at line 2: Map keys must be unique/);
    assert.match(parseError('- a\n- b\n'), /expected a map of settings at the top level/);
  });

  test('a bad extra_env_vars entry names its index', () => {
    assert.match(
      parseError('executor:\n  extra_env_vars: ["OK=1", "=oops"]\n'),
      /executor\.extra_env_vars\[1\]: expected NAME=VALUE or NAME/,
    );
  });
});

describe('secrets', () => {
  const SECRET = 's3cr3t-Value';

  test('a bad api_key type never shows the key', () => {
    for (const text of [
      `executor:\n  api_key: {nested: ${SECRET}}\n`,
      `executor:\n  api_key: [${SECRET}]\n`,
      `executor:\n  api_key: ${SECRET}: x\n`,
      `executor:\n  app_target: "http://user:${SECRET}@host"\n`,
      `executor:\n  extra_env_vars: ["=${SECRET}"]\n`,
    ]) {
      const message = parseError(text);
      assert.ok(!message.includes(SECRET), message);
    }
    assert.match(
      parseError(`executor:\n  api_key: [${SECRET}]\n`),
      /executor\.api_key: expected a string, got a list/,
    );
  });

  test('redactConfig hides the API key, target credentials and env values', () => {
    const config = parseConfig(
      [
        'executor:',
        `  api_key: ${SECRET}`,
        `  app_target: grpcs://user:${SECRET}@bb.example.com`,
        `  cache_target: grpc://cache:1985`,
        `  extra_env_vars: ["TOKEN=${SECRET}", "HOME"]`,
      ].join('\n'),
      ENV,
      SRC,
    );
    const redacted = redactConfig(config);
    assert.ok(!JSON.stringify(redacted).includes(SECRET));
    assert.equal(redacted.executor.api_key, '[redacted]');
    assert.equal(redacted.executor.app_target, 'grpcs://[redacted]@bb.example.com');
    assert.equal(redacted.executor.cache_target, 'grpc://cache:1985');
    assert.deepEqual(redacted.executor.extra_env_vars, ['TOKEN=[redacted]', 'HOME']);
    assert.equal(config.executor.api_key, SECRET, 'the original is not modified');
  });
});

describe('loadConfigFile', () => {
  test('reads a file from disk and reports a missing one as NOT_FOUND', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'idlebuild-config-'));
    try {
      const file = path.join(dir, 'config.yaml');
      await writeFile(file, 'executor:\n  pool: Linux-Big\n');
      assert.equal((await loadConfigFile(file, ENV)).executor.pool, 'Linux-Big');
      await assert.rejects(loadConfigFile(path.join(dir, 'missing.yaml'), ENV), (err) => {
        assert.ok(err instanceof GrpcError);
        assert.equal(err.code, Code.NOT_FOUND);
        assert.match(err.message, /missing\.yaml" not found/);
        return true;
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('docs/config.md', () => {
  test('lists exactly the supported keys', async () => {
    const docs = await readFile(new URL('../../../docs/config.md', import.meta.url), 'utf8');
    const documented = [...docs.matchAll(/^\| `([a-z_.]+)` \|/gm)].map((m) => m[1]);
    assert.deepEqual([...documented].sort(), [...CONFIG_KEYS].sort());
  });
});
