import type { Duration, Timestamp } from '../proto/index.js';

/** Milliseconds of a google.protobuf.Duration; 0 when absent. */
export function durationMs(d: { seconds?: number | string; nanos?: number } | null | undefined) {
  if (!d) return 0;
  return Number(d.seconds ?? 0) * 1000 + Math.floor((d.nanos ?? 0) / 1e6);
}

/** A google.protobuf.Duration of `ms` milliseconds (≥ 0). */
export function toDuration(ms: number): Duration {
  const whole = Math.max(0, Math.floor(ms));
  return { seconds: Math.floor(whole / 1000), nanos: (whole % 1000) * 1e6 };
}

/** A google.protobuf.Timestamp of a Date. */
export function toTimestamp(date: Date): Timestamp {
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}
