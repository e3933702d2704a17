// The headless entry point: `idlebuild solo | server | executor | start`.
// Parses arguments, builds the stack through core/compose.ts, and turns
// SIGINT/SIGTERM into a clean shutdown.
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { createLogger } from './core/log.js';
import { messageOf } from './core/errors.js';
import { runCommand, USAGE, type CliOptions } from './core/compose.js';

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        port: { type: 'string', short: 'p' },
        host: { type: 'string' },
        'data-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
    });
  } catch (err) {
    // parseArgs explains an unknown option with advice about "--" that does
    // not apply here; keep its first sentence.
    const reason = messageOf(err).split('. ')[0];
    process.stderr.write(`idlebuild: ${reason}\nRun "idlebuild --help" for usage.\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  // --help and --version win over any command, so "idlebuild solo --help" only
  // shows help.
  const command = values.help ? 'help' : values.version ? 'version' : (positionals[0] ?? 'help');
  if (positionals.length > 1) {
    process.stderr.write(`idlebuild: unexpected argument "${positionals[1]}"\n\n${USAGE}`);
    return 2;
  }
  const options: CliOptions = {
    config: values.config ?? process.env.IDLEBUILD_CONFIG,
    configFromEnv: values.config === undefined,
    port: values.port,
    host: values.host,
    dataDir: values['data-dir'],
  };
  // grpc-js prints its own error lines to stderr; Idlebuild reports the same
  // failures in its own words. GRPC_VERBOSITY still turns them back on.
  if (!process.env.GRPC_VERBOSITY) grpc.setLogVerbosity(grpc.logVerbosity.NONE);
  const logger = createLogger();
  return runCommand(command, options, { logger, stdout: process.stdout, stderr: process.stderr });
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== undefined) process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`idlebuild: ${messageOf(err)}\n`);
    process.exitCode = 1;
  },
);
