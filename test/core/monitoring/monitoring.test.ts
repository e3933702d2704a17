// The monitoring endpoints over real HTTP on loopback, reporting on a real
// executor connected to a real embedded server.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, afterEach, before, describe, test } from 'node:test';

import { DEFAULT_SERVER_TYPE, type Config } from '../../../src-main/core/config.js';
import { Code } from '../../../src-main/core/errors.js';
import { startExecutor, type Executor } from '../../../src-main/core/executor/executor.js';
import type { ExecutorConfig } from '../../../src-main/core/config.js';
import { createLogger, silentLogger } from '../../../src-main/core/log.js';
import { startMonitoring, type Monitoring } from '../../../src-main/core/monitoring/monitoring.js';
import { startServer, type EmbeddedServer } from '../../../src-main/core/server/server.js';
import { testConfig, testIdentity } from '../executor/executor-harness.js';
import { ReapiClient } from '../executor/reapi-client.js';
import { freePort, get, occupyPort, sample, scrape, until } from './scrape.js';

const API_KEY = 'ib-test-api-key-8c1f2e9d7a';
const SERVER_TYPE = { 'server-type': DEFAULT_SERVER_TYPE };

/** The monitoring keys of a config, every port picked by the OS unless given. */
function ports(overrides: Partial<Config> = {}) {
  return {
    port: 0,
    monitoring_port: 0,
    listen: '127.0.0.1',
    server_type: DEFAULT_SERVER_TYPE,
    ...overrides,
  };
}

describe('monitoring', () => {
  let dir: string;
  let server: EmbeddedServer;
  let client: ReapiClient;
  let hosts = 0;
  const executors: Executor[] = [];
  const monitors: Monitoring[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'idlebuild-monitoring-'));
    server = await startServer({
      port: 0,
      dataDirectory: join(dir, 'server'),
      executorApiKey: API_KEY,
    });
    client = new ReapiClient(server.address);
  });
  afterEach(async () => {
    for (const m of monitors.splice(0)) await m.close();
    for (const e of executors.splice(0)) await e.stop({ graceMs: 0 });
  });
  after(async () => {
    client.close();
    await server.close(0);
    await rm(dir, { recursive: true, force: true });
  });

  /** A new executor with the API key, against the embedded server unless told otherwise. */
  async function executor(overrides: Partial<ExecutorConfig> = {}, address = server.address) {
    const host = `host-${++hosts}`;
    const e = await startExecutor({
      config: testConfig(join(dir, host), address, { api_key: API_KEY, ...overrides }),
      identity: testIdentity(host),
    });
    executors.push(e);
    return e;
  }

  async function monitor(opts: Parameters<typeof startMonitoring>[0]) {
    const m = await startMonitoring(opts);
    monitors.push(m);
    return m;
  }

  /** Monitoring of one executor on free ports, failing on bind errors. */
  function monitorExecutor(e: Executor) {
    return monitor({ config: ports(), executor: e, logger: silentLogger, fatalOnBindError: true });
  }

  test('/healthz answers OK only to requests that name the server type', async () => {
    const m = await monitor({
      config: ports(),
      executor: await executor(),
      logger: silentLogger,
      fatalOnBindError: true,
    });
    const url = `http://${m.healthAddress}/healthz`;

    assert.deepEqual(await get(url, SERVER_TYPE), { status: 200, body: 'OK\n' });
    assert.equal((await get(`${url}?server-type=${DEFAULT_SERVER_TYPE}`)).status, 200);
    const anonymous = await get(url);
    assert.equal(anonymous.status, 500);
    assert.match(anonymous.body, /Server type "" unknown/);
    assert.match(anonymous.body, /server-type: prod-buildbuddy-executor/);
    const wrong = await get(`http://${m.healthAddress}/readyz`, { 'server-type': 'prod-app' });
    assert.equal(wrong.status, 500);
    assert.match(wrong.body, /Server type "prod-app" unknown/);
    assert.equal((await get(`http://${m.healthAddress}/metrics`)).status, 404);
    assert.notEqual(m.healthAddress, m.metricsAddress);
  });

  test('/readyz fails while the scheduler is unreachable', async () => {
    const unreachable = `127.0.0.1:${await freePort()}`;
    const m = await monitor({
      config: ports(),
      executor: await executor({}, unreachable),
      logger: silentLogger,
      fatalOnBindError: true,
    });

    const ready = await get(`http://${m.healthAddress}/readyz`, SERVER_TYPE);
    assert.equal(ready.status, 503);
    assert.match(ready.body, /registered_to_scheduler/);
    const text = await scrape(m.metricsAddress!);
    const status = { health_check_name: 'registered_to_scheduler' };
    assert.equal(sample(text, 'buildbuddy_health_check_status', status), 0);
  });

  test('/readyz is OK once the executor registers and fails again after it stops', async () => {
    const e = await executor();
    const m = await monitorExecutor(e);
    const readyz = `http://${m.healthAddress}/readyz`;

    await until(async () => (await get(readyz, SERVER_TYPE)).status === 200, 'ready');
    const status = { health_check_name: 'registered_to_scheduler' };
    assert.equal(
      sample(await scrape(m.metricsAddress!), 'buildbuddy_health_check_status', status),
      1,
    );
    await e.stop({ graceMs: 0 });
    const stopped = await get(readyz, SERVER_TYPE);
    assert.equal(stopped.status, 503);
    assert.match(stopped.body, /registered_to_scheduler/);
  });

  test('one executed action moves the task counters and histograms', async () => {
    const e = await executor();
    const m = await monitorExecutor(e);
    await until(() => e.snapshot().connected, 'registered');
    const before = await scrape(m.metricsAddress!);
    assert.equal(sample(before, 'buildbuddy_remote_execution_tasks_started_count'), 0);

    // Run one action with an input file and an output.
    const action = await client.uploadAction({
      args: ['sh', '-c', 'cat in.txt > out.txt'],
      files: { 'in.txt': 'metrics\n' },
      outputPaths: ['out.txt'],
    });
    const { response } = await client.execute(action);
    assert.equal(response.status?.code ?? Code.OK, Code.OK);
    await until(() => e.snapshot().completed === 1, 'the attempt is counted');
    const text = await scrape(m.metricsAddress!);

    // Counters keep BuildBuddy's exact names, without a _total suffix.
    assert.match(text, /^# TYPE buildbuddy_remote_execution_tasks_started_count counter$/m);
    assert.equal(sample(text, 'buildbuddy_remote_execution_tasks_started_count'), 1);
    assert.equal(sample(text, 'buildbuddy_executor_tasks_started_total'), 1);
    const ok = { exit_code: '0', status: 'OK', isolation: 'none' };
    assert.equal(sample(text, 'buildbuddy_remote_execution_count', ok), 1);
    const completed = { outcome: 'completed' };
    assert.equal(sample(text, 'buildbuddy_executor_tasks_completed_total', completed), 1);

    // Histograms saw the task once.
    assert.equal(sample(text, 'buildbuddy_executor_task_duration_seconds_count'), 1);
    const stage = (s: string) => ({ stage: s, group_id: 'ANON' });
    const durations = 'buildbuddy_remote_execution_executed_action_metadata_durations_usec_count';
    for (const s of ['worker_queued', 'input_fetch', 'execution', 'output_upload', 'worker'])
      assert.equal(sample(text, durations, stage(s)), 1, `stage ${s}`);
    assert.equal(sample(text, 'buildbuddy_remote_execution_file_download_count_count'), 1);
    assert.equal(sample(text, 'buildbuddy_remote_execution_file_download_count_sum'), 1);
    assert.equal(sample(text, 'buildbuddy_remote_execution_file_upload_count_sum'), 3);
    assert.ok(
      sample(text, 'buildbuddy_remote_execution_file_cache_requests', { status: 'miss' })! >= 1,
    );

    // Gauges are back at rest; capacity and utilization are reported.
    assert.equal(
      sample(text, 'buildbuddy_remote_execution_tasks_executing', { stage: 'execution' }),
      0,
    );
    assert.equal(sample(text, 'buildbuddy_remote_execution_queue_length', { group_id: 'ANON' }), 0);
    assert.equal(sample(text, 'buildbuddy_remote_execution_assigned_milli_cpu'), 0);
    assert.equal(sample(text, 'buildbuddy_remote_execution_assignable_milli_cpu'), 2000);
    assert.equal(sample(text, 'buildbuddy_remote_execution_assignable_ram_bytes'), 4e9);
    for (const name of ['cpu', 'memory']) {
      const value = sample(text, `buildbuddy_executor_${name}_utilization`)!;
      assert.ok(value >= 0 && value <= 1, `${name} utilization ${value}`);
    }
    assert.ok(sample(text, 'idlebuild_process_cpu_user_seconds_total')! > 0);
    assert.equal(sample(text, 'buildbuddy_version', { version: '0.1.0', commit: 'unknown' }), 1);
  });

  test('metrics never contain the API key', async () => {
    const e = await executor();
    const m = await monitorExecutor(e);
    const action = await client.uploadAction({ args: ['sh', '-c', 'echo secret-free'] });
    await client.execute(action);
    await until(() => e.snapshot().completed === 1, 'the attempt is counted');

    const text = await scrape(m.metricsAddress!);
    assert.equal(sample(text, 'buildbuddy_remote_execution_tasks_started_count'), 1);
    assert.ok(!text.includes(API_KEY), 'the API key appears in /metrics');
    assert.ok(!text.includes(API_KEY.slice(0, 12)), 'part of the API key appears in /metrics');
  });

  test('queued work shows in the executor and server queue gauges', async () => {
    const e = await executor({ exclusive_task_scheduling: true });
    const m = await monitor({
      config: ports(),
      executor: e,
      server,
      logger: silentLogger,
      fatalOnBindError: true,
    });
    await until(() => e.snapshot().connected, 'registered');
    const slow = (name: string) =>
      client.uploadAction({ args: ['sh', '-c', `sleep 1; echo ${name}`], files: { [name]: name } });
    const actions = await Promise.all([slow('first'), slow('second')]);
    const executions = actions.map((a) => client.execute(a));

    // One runs, the other waits: in the executor's queue or on the server.
    let text = '';
    await until(async () => {
      text = await scrape(m.metricsAddress!);
      return (
        sample(text, 'buildbuddy_remote_execution_tasks_executing', { stage: 'execution' }) === 1
      );
    }, 'one task executes');
    const queued =
      sample(text, 'buildbuddy_remote_execution_queue_length', { group_id: 'ANON' })! +
      sample(text, 'idlebuild_server_queue_length')!;
    assert.ok(queued >= 1, `queued: ${queued}\n${text}`);
    assert.equal(sample(text, 'buildbuddy_remote_execution_assigned_milli_cpu'), 600);
    assert.equal(sample(text, 'buildbuddy_remote_execution_assigned_ram_bytes'), 400e6);

    await Promise.all(executions);
    await until(() => e.snapshot().completed === 2, 'both attempts are counted');
    text = await scrape(m.metricsAddress!);
    assert.equal(sample(text, 'idlebuild_server_queue_length'), 0);
    assert.equal(sample(text, 'buildbuddy_remote_execution_queue_length', { group_id: 'ANON' }), 0);
    assert.equal(sample(text, 'buildbuddy_remote_execution_assigned_milli_cpu'), 0);
  });

  test('a port in use is a startup error naming the address and the config key', async () => {
    const e = await executor();
    const taken = await occupyPort();
    try {
      await assert.rejects(
        startMonitoring({
          config: ports({ monitoring_port: taken.port }),
          executor: e,
          logger: silentLogger,
          fatalOnBindError: true,
        }),
        new RegExp(
          `Failed to listen on 127\\.0\\.0\\.1:${taken.port} for metrics ` +
            '\\(config key `monitoring_port`\\): address in use',
        ),
      );
      await assert.rejects(
        startMonitoring({
          config: ports({ port: taken.port }),
          executor: e,
          logger: silentLogger,
          fatalOnBindError: true,
        }),
        new RegExp(`127\\.0\\.0\\.1:${taken.port} for health checks \\(config key \`port\`\\)`),
      );
    } finally {
      await taken.close();
    }
  });

  test('without fatalOnBindError a port in use is a warning and the other endpoint runs', async () => {
    const taken = await occupyPort();
    const lines: string[] = [];
    const logger = createLogger({
      level: 'warn',
      destination: new Writable({
        write: (chunk, _enc, done) => done(void lines.push(String(chunk))),
      }),
    });
    try {
      const m = await monitor({
        config: ports({ monitoring_port: taken.port }),
        executor: await executor(),
        logger,
        fatalOnBindError: false,
      });
      assert.equal(m.metricsAddress, undefined);
      assert.equal((await get(`http://${m.healthAddress}/healthz`, SERVER_TYPE)).status, 200);
      assert.match(lines.join(''), /address in use.*Continuing without metrics/);
    } finally {
      await taken.close();
    }
  });

  test('-1 turns an endpoint off, and one port can serve every path', async () => {
    const e = await executor();
    const off = await monitor({
      config: ports({ port: -1, monitoring_port: -1 }),
      executor: e,
      logger: silentLogger,
      fatalOnBindError: true,
    });
    assert.equal(off.healthAddress, undefined);
    assert.equal(off.metricsAddress, undefined);

    const port = await freePort();
    const shared = await monitor({
      config: ports({ port, monitoring_port: port }),
      executor: e,
      logger: silentLogger,
      fatalOnBindError: true,
    });
    assert.equal(shared.healthAddress, `127.0.0.1:${port}`);
    assert.equal(shared.metricsAddress, `127.0.0.1:${port}`);
    assert.equal((await get(`http://127.0.0.1:${port}/healthz`, SERVER_TYPE)).status, 200);
    assert.match(await scrape(`127.0.0.1:${port}`), /buildbuddy_remote_execution_count/);
  });
});
