import { collectDefaultMetrics, exponentialBuckets, Gauge, Registry } from 'prom-client';

// Shared pieces of Idlebuild's Prometheus metrics. Metric names follow
// BuildBuddy's (`buildbuddy_<subsystem>_<name>`, counters without a `_total`
// suffix) so that existing dashboards work; Idlebuild's own additions are
// named `idlebuild_*`. Every part registers on a Registry it is given, never
// on prom-client's global registry, so that tests can run several.

/** Prefix of the Node.js process metrics (CPU seconds, heap, event loop lag, GC). */
export const PROCESS_METRICS_PREFIX = 'idlebuild_';

/** Durations in microseconds, as BuildBuddy's `*_usec` histograms: 1 ms to about 70 min. */
export const USEC_BUCKETS = exponentialBuckets(1_000, 4, 12);

/** File counts per task: 1 to about a million. */
export const COUNT_BUCKETS = exponentialBuckets(1, 4, 11);

/** Byte sizes per task: 1 B to 100 GB. */
export const BYTES_BUCKETS = exponentialBuckets(1, 10, 12);

/**
 * A new registry holding the Node.js process metrics (prefixed
 * `idlebuild_`) and `buildbuddy_version{version, commit}`, always 1. One per
 * process in production; the caller registers the rest on it.
 */
export function createProcessRegistry(build: { version: string; commit?: string }): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: PROCESS_METRICS_PREFIX });
  const version = new Gauge({
    name: 'buildbuddy_version',
    help: 'Version of the running binary; always 1.',
    labelNames: ['version', 'commit'],
    registers: [registry],
  });
  version.set({ version: build.version, commit: build.commit || 'unknown' }, 1);
  return registry;
}
