import { pino, type Logger } from 'pino';
import { invalidArgument } from './errors.js';

export type { Logger };

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

/**
 * Paths that may carry secrets, removed from every log line. API keys and JWTs
 * never reach a log, whatever object they travel in.
 */
const REDACT = [
  'api_key',
  'apiKey',
  'jwt',
  '*.api_key',
  '*.apiKey',
  '*.jwt',
  '*.*.api_key',
  '*.*.jwt',
  'headers["x-buildbuddy-api-key"]',
  'headers["x-buildbuddy-jwt"]',
  'authorization',
];

/**
 * The root logger. Level from IDLEBUILD_LOG_LEVEL (default info). Per-module
 * debug tracing: IDLEBUILD_DEBUG=scheduler,filecache (or "*") turns debug on
 * for the named child loggers only.
 */
export function createLogger(
  opts: { level?: string; destination?: NodeJS.WritableStream } = {},
): Logger {
  const level = opts.level ?? process.env.IDLEBUILD_LOG_LEVEL ?? 'info';
  if (!LEVELS.includes(level)) {
    throw invalidArgument(`IDLEBUILD_LOG_LEVEL is "${level}": use one of ${LEVELS.join(', ')}`);
  }
  return pino(
    { level, redact: { paths: REDACT, censor: '[redacted]' }, base: undefined },
    opts.destination ?? pino.destination(2),
  );
}

/** A child logger for one module, at debug when IDLEBUILD_DEBUG names it. */
export function moduleLogger(parent: Logger, module: string): Logger {
  const traced = (process.env.IDLEBUILD_DEBUG ?? '').split(',').map((s) => s.trim());
  const child = parent.child({ module });
  if (traced.includes('*') || traced.includes(module)) child.level = 'debug';
  return child;
}

/** A logger that discards everything, for tests and library use. */
export const silentLogger: Logger = pino({ level: 'silent' });
