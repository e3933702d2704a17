// Monitoring as the commands wire it: solo mode in-process through
// runCommand, and the headless executor as a real child process.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';

import { runCommand } from '../../../src-main/core/compose.js';
import { createLogger } from '../../../src-main/core/log.js';
import { freePort, get, occupyPort, sample, scrape, until } from './scrape.js';

const bin = new URL('../../../../bin/idlebuild.js', import.meta.url).pathname;

/** Runs `idlebuild solo` in-process until stop() is called. */
function startSolo(dataDir: string, config: string) {
  let stop!: () => void;
  const stopSignal = new Promise<void>((resolve) => (stop = resolve));
  const out = new PassThrough();
  const log = new PassThrough();
  let stdout = '';
  let logs = '';
  out.on('data', (d) => (stdout += d));
  log.on('data', (d) => (logs += d));
  const exit = runCommand(
    'solo',
    { config, port: '0', dataDir },
    {
      logger: createLogger({ level: 'warn', destination: log }),
      stdout: out,
      stderr: out,
      stopSignal,
    },
  );
  return {
    stdout: () => stdout,
    logs: () => logs,
    ready: () => until(() => stdout.includes('Press Ctrl-C'), 'solo mode is ready', 15_000),
    stop: async () => {
      stop();
      return exit;
    },
  };
}

describe('monitoring in the commands', () => {
  let dir: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'idlebuild-monitoring-cli-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('solo mode prints the metrics URL and serves the server and executor metrics', async () => {
    const config = join(dir, 'solo.yaml');
    await writeFile(config, 'port: 0\nmonitoring_port: 0\n');
    const solo = startSolo(join(dir, 'solo'), config);
    try {
      await solo.ready();
      const url = /^ {2}Metrics: {3}http:\/\/(127\.0\.0\.1:\d+)\/metrics$/m.exec(solo.stdout());
      assert.ok(url, `no Metrics line in:\n${solo.stdout()}`);
      const text = await scrape(url[1]);
      assert.equal(sample(text, 'idlebuild_server_queue_length'), 0);
      assert.equal(
        sample(text, 'buildbuddy_remote_execution_queue_length', { group_id: 'ANON' }),
        0,
      );
    } finally {
      assert.equal(await solo.stop(), 0);
    }
  });

  test('solo mode on taken ports warns and runs without them', async () => {
    const [health, metrics] = [await occupyPort(), await occupyPort()];
    const config = join(dir, 'taken.yaml');
    await writeFile(config, `port: ${health.port}\nmonitoring_port: ${metrics.port}\n`);
    const solo = startSolo(join(dir, 'taken'), config);
    try {
      await solo.ready();
      assert.doesNotMatch(solo.stdout(), /Metrics:/);
      const logs = solo.logs();
      assert.match(logs, new RegExp(`127\\.0\\.0\\.1:${metrics.port} for metrics.*address in use`));
      assert.match(logs, new RegExp(`127\\.0\\.0\\.1:${health.port} for health checks`));
    } finally {
      assert.equal(await solo.stop(), 0);
      await Promise.all([health.close(), metrics.close()]);
    }
  });

  test('the executor command serves /readyz and exits naming the key when its port is taken', async () => {
    const scheduler = `grpc://127.0.0.1:${await freePort()}`;
    const healthPort = await freePort();
    const config = join(dir, 'executor.yaml');
    await writeFile(
      config,
      `port: ${healthPort}\nmonitoring_port: -1\nexecutor:\n  app_target: ${scheduler}\n`,
    );

    // Free ports: the executor runs, unready while its scheduler is unreachable.
    const child = spawnExecutor(config);
    child.stderr!.resume();
    try {
      await until(
        async () => {
          const readyz = await get(`http://127.0.0.1:${healthPort}/readyz`, {
            'server-type': 'prod-buildbuddy-executor',
          }).catch(() => undefined);
          return readyz?.status === 503;
        },
        'the executor serves /readyz',
        15_000,
      );
    } finally {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }

    // A taken port: a clear error, and the process exits.
    const taken = await occupyPort();
    try {
      await writeFile(
        config,
        `port: -1\nmonitoring_port: ${taken.port}\nexecutor:\n  app_target: ${scheduler}\n`,
      );
      const failing = spawnExecutor(config);
      let stderr = '';
      failing.stderr!.on('data', (d) => (stderr += d));
      const [code] = await once(failing, 'exit');
      assert.equal(code, 1);
      assert.match(
        stderr,
        new RegExp(
          `Failed to listen on 127\\.0\\.0\\.1:${taken.port} for metrics ` +
            '\\(config key `monitoring_port`\\): address in use',
        ),
      );
    } finally {
      await taken.close();
    }
  });

  function spawnExecutor(config: string) {
    return spawn(process.execPath, [bin, 'executor', '--config', config], {
      env: { ...process.env, IDLEBUILD_HOME: join(dir, 'home'), IDLEBUILD_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 30_000,
    });
  }
});
