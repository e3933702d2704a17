// The headless entry point: `idlebuild solo | server | executor | start`.
// Parses arguments, builds the stack through core/compose.ts, and turns
// SIGINT/SIGTERM into a clean shutdown.
import { parseArgs } from 'node:util';
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
    process.stderr.write(`idlebuild: ${messageOf(err)}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const command = positionals[0] ?? (values.help ? 'help' : values.version ? 'version' : 'help');
  if (positionals.length > 1) {
    process.stderr.write(`idlebuild: unexpected argument "${positionals[1]}"\n\n${USAGE}`);
    return 2;
  }
  const options: CliOptions = {
    config: values.config ?? process.env.IDLEBUILD_CONFIG,
    port: values.port,
    host: values.host,
    dataDir: values['data-dir'],
  };
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
