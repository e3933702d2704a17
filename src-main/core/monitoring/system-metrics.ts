import os from 'node:os';

import { Gauge, type Registry } from 'prom-client';

/**
 * Registers the machine-wide utilization gauges of the product brief, both
 * between 0 and 1 and computed at scrape time:
 *
 * - `buildbuddy_executor_cpu_utilization`: the fraction of CPU time, over all
 *   cores and all processes (actions included), that was not idle since the
 *   previous scrape (since registration for the first one);
 * - `buildbuddy_executor_memory_utilization`: 1 − free ÷ total memory, as
 *   `os.freemem()` and `os.totalmem()` report them.
 *
 * Machine-wide rather than per process, because what an executor lends is
 * the machine's spare capacity.
 */
export function registerSystemMetrics(registry: Registry): void {
  let previous = cpuTimes();
  let utilization = 0;
  new Gauge({
    name: 'buildbuddy_executor_cpu_utilization',
    help: 'Fraction (0-1) of machine CPU time not idle since the previous scrape.',
    registers: [registry],
    collect() {
      const now = cpuTimes();
      const total = now.total - previous.total;
      if (total > 0) utilization = clamp((now.busy - previous.busy) / total);
      previous = now;
      this.set(utilization);
    },
  });
  new Gauge({
    name: 'buildbuddy_executor_memory_utilization',
    help: 'Fraction (0-1) of machine memory in use: 1 - free/total.',
    registers: [registry],
    collect() {
      this.set(clamp(1 - os.freemem() / os.totalmem()));
    },
  });
}

/** Busy and total CPU milliseconds since boot, summed over all cores. */
function cpuTimes(): { busy: number; total: number } {
  let busy = 0;
  let total = 0;
  for (const { times } of os.cpus()) {
    const used = times.user + times.nice + times.sys + times.irq;
    busy += used;
    total += used + times.idle;
  }
  return { busy, total };
}

function clamp(fraction: number): number {
  return Math.min(1, Math.max(0, fraction));
}
