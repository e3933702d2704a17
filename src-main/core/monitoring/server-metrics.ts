import { Gauge, type Registry } from 'prom-client';

/** The part of the embedded server its metrics read. */
export interface ServerGaugeSource {
  /** Tasks waiting for an executor to lease them. */
  queueLength(): number;
}

/**
 * Registers `idlebuild_server_queue_length`, read from the embedded server
 * at scrape time: the signal to autoscale executors on.
 */
export function registerServerMetrics(registry: Registry, server: ServerGaugeSource): void {
  new Gauge({
    name: 'idlebuild_server_queue_length',
    help: 'Tasks in the embedded server waiting for an executor to lease them.',
    registers: [registry],
    collect() {
      this.set(server.queueLength());
    },
  });
}
