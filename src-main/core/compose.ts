// The composition root: builds the embedded server and the executor from the
// command line and config, prints what a user needs to know, and shuts both
// down cleanly on SIGINT/SIGTERM. Nothing else in core wires parts together.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { bazelCommand } from '../../src-shared/bazel.js';
import {
  dataDirectory,
  defaultConfig,
  loadConfigFile,
  redactConfig,
  redactTarget,
  type Config,
} from './config.js';
import { invalidArgument } from './errors.js';
import { resolveIdentity, readVersion } from './identity.js';
import type { Logger } from './log.js';
import { checkIsolationSettings, startExecutor, type Executor } from './executor/executor.js';
import { startMonitoring, type Monitoring } from './monitoring/monitoring.js';
import { startServer, type EmbeddedServer } from './server/server.js';

export const DEFAULT_PORT = 1985;

/** How long solo mode lets running actions finish after Ctrl-C. */
const SOLO_STOP_GRACE_MS = 10_000;

export const USAGE = `Usage: idlebuild <command> [options]

Commands:
  start      Solo mode when no executor.app_target is configured, else the executor (npm start)
  solo       Embedded server on 127.0.0.1:${DEFAULT_PORT} plus an executor connected to it
  server     The embedded server alone (REAPI + BuildBuddy scheduler service)
  executor   The headless executor; needs executor.app_target in --config
  help       Show this help
  version    Print the version

Options:
  -c, --config FILE   Executor config for start/solo/executor (YAML, BuildBuddy key names)
  -p, --port PORT     Server port for solo/server (default ${DEFAULT_PORT}; 0 picks a free port)
      --host HOST     Server address for solo/server (default 127.0.0.1)
      --data-dir DIR  Where the server stores its CAS and Action Cache, and solo mode its
                      executor's build root and file cache (default $IDLEBUILD_HOME or
                      ~/.cache/idlebuild)

Environment:
  IDLEBUILD_CONFIG           Config file when --config is not given
  IDLEBUILD_HOME             Data directory (default ~/.cache/idlebuild)
  IDLEBUILD_LOG_LEVEL        trace | debug | info | warn | error (default info)
  IDLEBUILD_DEBUG            Per-module debug logs, e.g. "scheduler,lease" or "*"
  IDLEBUILD_EXECUTOR_API_KEY For server/solo: executors must present this API key
  GRPC_VERBOSITY             Turns grpc-js's own diagnostic lines back on

Examples:
  idlebuild solo
  bazel build --remote_executor=grpc://127.0.0.1:${DEFAULT_PORT} //...
  idlebuild executor --config executor.yaml
`;

export interface CliOptions {
  config?: string;
  /** The config path came from IDLEBUILD_CONFIG, not --config. */
  configFromEnv?: boolean;
  port?: string;
  host?: string;
  dataDir?: string;
}

export interface CliIo {
  logger: Logger;
  stdout: Writable;
  stderr: Writable;
  /** Resolves when the process is asked to stop; defaults to SIGINT/SIGTERM. */
  stopSignal?: Promise<void>;
}

/** Runs one CLI command to completion and returns the process exit code. */
export async function runCommand(command: string, opts: CliOptions, io: CliIo): Promise<number> {
  switch (command) {
    case 'help':
      io.stdout.write(USAGE);
      return 0;
    case 'version':
      io.stdout.write(`idlebuild ${await readVersion()}\n`);
      return 0;
    case 'server':
      return runServer(opts, io);
    case 'solo':
      return runSolo(opts, io);
    case 'executor':
      return runExecutor(opts, io);
    case 'start': {
      const config = await loadConfig(opts);
      return config.executor.app_target ? runExecutor(opts, io) : runSolo(opts, io);
    }
    default:
      io.stderr.write(`idlebuild: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

async function runServer(opts: CliOptions, io: CliIo): Promise<number> {
  if (opts.config && !opts.configFromEnv) {
    throw invalidArgument(
      '--config configures an executor; "idlebuild server" takes only --port, --host and --data-dir',
    );
  }
  const dataDir = opts.dataDir ?? dataDirectory();
  const server = await startEmbeddedServer(opts, join(dataDir, 'server'), io.logger);
  const endpoint = `grpc://${server.address}`;
  const monitoring = await startMonitoring({
    config: defaultConfig(),
    server,
    logger: io.logger,
    fatalOnBindError: false,
  });
  const stop = waitForStop(io);
  io.stdout.write(
    `Idlebuild server is ready.\n  Endpoint:  ${endpoint}\n  Data:      ${join(dataDir, 'server')}\n` +
      metricsLine(monitoring) +
      `Connect executors with executor.app_target: ${endpoint}\n` +
      `Build with:\n  ${bazelCommand(endpoint)}\nPress Ctrl-C to stop.\n`,
  );
  await stop;
  io.stdout.write('Stopping server...\n');
  await monitoring.close();
  await server.close();
  return 0;
}

async function runSolo(opts: CliOptions, io: CliIo): Promise<number> {
  // Step: config. Solo mode always serves locally, whatever app_target says.
  const config = await loadConfig(opts);
  if (config.executor.app_target) {
    io.logger.warn(
      { app_target: config.executor.app_target },
      'Solo mode ignores executor.app_target and uses its embedded server',
    );
  }
  checkIsolationSettings(config);
  const dataDir = opts.dataDir ?? dataDirectory();
  if (opts.dataDir) {
    config.executor.root_directory = join(dataDir, 'remote_build');
    config.executor.local_cache_directory = join(dataDir, 'filecache');
  }

  // Step: the server, then an executor connected to it over loopback.
  const server = await startEmbeddedServer(opts, join(dataDir, 'server'), io.logger);
  const endpoint = `grpc://${server.address}`;
  config.executor.app_target = `grpc://127.0.0.1:${server.port}`;
  config.executor.cache_target = '';
  config.executor.api_key = process.env.IDLEBUILD_EXECUTOR_API_KEY ?? '';
  let executor: Executor;
  try {
    executor = await startConfiguredExecutor(config, io.logger);
    await waitForRegistration(executor, 10_000);
  } catch (err) {
    await server.close();
    throw err;
  }
  const monitoring = await startMonitoring({
    config,
    executor,
    server,
    logger: io.logger,
    fatalOnBindError: false,
  });

  // Step: tell the user how to use it, then wait for Ctrl-C.
  const stop = waitForStop(io);
  io.stdout.write(
    `Idlebuild solo mode is ready: an embedded server and an executor on this machine.\n` +
      `  Endpoint:  ${endpoint}\n  Data:      ${dataDir}\n` +
      metricsLine(monitoring) +
      `Build remotely with:\n  ${bazelCommand(endpoint)}\nPress Ctrl-C to stop.\n`,
  );
  await stop;
  io.stdout.write(stoppingMessage(SOLO_STOP_GRACE_MS));
  await monitoring.close();
  await executor.stop({ graceMs: SOLO_STOP_GRACE_MS });
  await server.close();
  return 0;
}

async function runExecutor(opts: CliOptions, io: CliIo): Promise<number> {
  const config = await loadConfig(opts);
  if (!config.executor.app_target) {
    throw invalidArgument(
      'executor.app_target is not set: set it in --config to a BuildBuddy app or an ' +
        'idlebuild server (e.g. grpc://127.0.0.1:1985), or run "idlebuild solo"',
    );
  }
  io.logger.info({ config: redactConfig(config) }, 'Starting executor');
  const executor = await startConfiguredExecutor(config, io.logger);
  const monitoring = await startMonitoring({
    config,
    executor,
    logger: io.logger,
    fatalOnBindError: true,
  }).catch(async (err) => {
    await executor.stop({ graceMs: 0 });
    throw err;
  });
  const stop = waitForStop(io);
  io.stdout.write(
    `Idlebuild executor is running against ${redactTarget(config.executor.app_target)}.\n` +
      metricsLine(monitoring),
  );
  await stop;
  const graceMs = Math.max(0, config.max_shutdown_duration - 5_000);
  io.stdout.write(stoppingMessage(graceMs));
  await monitoring.close();
  await executor.stop({ graceMs });
  return 0;
}

/** The banner line with the /metrics URL, if it is served. */
function metricsLine(monitoring: Monitoring): string {
  const address = monitoring.metricsAddress;
  return address ? `  Metrics:   http://${address}/metrics\n` : '';
}

async function loadConfig(opts: CliOptions): Promise<Config> {
  return opts.config ? loadConfigFile(opts.config) : defaultConfig();
}

async function startConfiguredExecutor(config: Config, logger: Logger): Promise<Executor> {
  await mkdir(config.executor.root_directory, { recursive: true });
  await mkdir(config.executor.local_cache_directory, { recursive: true });
  const identity = await resolveIdentity(config);
  return startExecutor({ config, identity, logger });
}

async function startEmbeddedServer(
  opts: CliOptions,
  dataDirectory: string,
  logger: Logger,
): Promise<EmbeddedServer> {
  return startServer({
    host: opts.host ?? '127.0.0.1',
    port: parsePort(opts.port),
    dataDirectory,
    executorApiKey: process.env.IDLEBUILD_EXECUTOR_API_KEY || undefined,
    logger,
  });
}

function parsePort(value: string | undefined): number {
  if (value === undefined) return DEFAULT_PORT;
  const port = Number(value);
  if (!/^\d+$/.test(value) || port > 65535) {
    throw invalidArgument(`Invalid --port "${value}": expected a number from 0 to 65535`);
  }
  return port;
}

/**
 * Waits until the executor's registration stream is up, so that the first
 * build after the banner finds an executor. Gives up quietly after timeoutMs:
 * the executor keeps reconnecting on its own.
 */
async function waitForRegistration(executor: Executor, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!executor.snapshot().connected && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function stoppingMessage(graceMs: number): string {
  return (
    `Stopping: running actions get up to ${Math.round(graceMs / 1000)} s to finish, then go ` +
    'back to the scheduler. Press Ctrl-C again to stop at once.\n'
  );
}

/** Resolves on the first SIGINT or SIGTERM; a second one exits at once. */
function waitForStop(io: CliIo): Promise<void> {
  if (io.stopSignal) return io.stopSignal;
  return new Promise((resolve) => {
    const onSignal = () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.once('SIGINT', () => process.exit(130));
      resolve();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
