import { invalidArgument } from './errors.js';

/** Milliseconds per Go duration unit. */
const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3, // U+00B5 micro sign
  μs: 1e-3, // U+03BC Greek mu
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

const GO_DURATION = /^([-+]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)$/;
const GO_TERM = /(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)/g;
const PLAIN_SECONDS = /^[-+]?(?:\d+\.?\d*|\.\d+)$/;

/**
 * Parses a duration the way BuildBuddy's config does, returning
 * milliseconds (possibly fractional for ns/us):
 * - Go syntax: "8h", "60s", "1m30s", "500ms", "1.5h", "-1s", "0";
 * - a number of seconds, as a YAML number (60) or a plain string ("60").
 * Throws INVALID_ARGUMENT on anything else, including NaN and infinities.
 */
export function parseDuration(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isFinite(input)) throw badDuration(String(input));
    return input * 1000;
  }
  const s = input.trim();
  if (PLAIN_SECONDS.test(s)) return Number(s) * 1000;
  const match = GO_DURATION.exec(s);
  if (!match) throw badDuration(input);
  let ms = 0;
  for (const [, value, unit] of match[2].matchAll(GO_TERM)) ms += Number(value) * UNIT_MS[unit];
  if (!Number.isFinite(ms)) throw badDuration(input);
  return match[1] === '-' ? -ms : ms;
}

/** Formats milliseconds in Go syntax ("1h30m", "500ms", "0s"), for docs and dumps. */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  const sign = ms < 0 ? '-' : '';
  let rest = Math.abs(ms);
  if (rest < 1000) return `${sign}${rest}ms`;
  const parts: string[] = [];
  for (const [unit, size] of [
    ['h', 3_600_000],
    ['m', 60_000],
  ] as const) {
    const n = Math.floor(rest / size);
    if (n > 0) parts.push(`${n}${unit}`);
    rest -= n * size;
  }
  if (rest > 0) parts.push(`${rest / 1000}s`);
  return sign + parts.join('');
}

function badDuration(text: string) {
  return invalidArgument(
    `Invalid duration "${text}": use Go syntax such as "90s", "1m30s", "500ms" or "8h", ` +
      'or a number of seconds',
  );
}
