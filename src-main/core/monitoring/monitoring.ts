import { Registry } from 'prom-client';

import type { Config } from '../config.js';
import { messageOf } from '../errors.js';
import type { Executor } from '../executor/executor.js';
import { readVersion } from '../identity.js';
import { moduleLogger, type Logger } from '../log.js';
import { createHealthChecker, executorHealthChecks } from './health.js';
import { serveHttp, type HttpEndpoint, type Routes } from './http.js';
import { createProcessRegistry } from './metrics.js';
import { registerServerMetrics, type ServerGaugeSource } from './server-metrics.js';
import { registerSystemMetrics } from './system-metrics.js';

/** A port value that turns an endpoint off. */
export const DISABLED_PORT = -1;

export interface MonitoringOptions {
  /** `port` (health), `monitoring_port` (/metrics), `listen` and `server_type`. */
  config: Pick<Config, 'port' | 'monitoring_port' | 'listen' | 'server_type'>;
  /**
   * The executor to report on: its metrics, the utilization gauges, and
   * /healthz and /readyz on `port`. Without one, no health endpoints.
   */
  executor?: Executor;
  /** The embedded server, for `idlebuild_server_queue_length`. */
  server?: ServerGaugeSource;
  logger: Logger;
  /**
   * Whether a port that cannot be bound stops startup (the headless
   * executor, where an orchestrator probes it) or is logged as a warning
   * and skipped (solo and server mode on a workstation).
   */
  fatalOnBindError: boolean;
}

/** The running monitoring endpoints. */
export interface Monitoring {
  /** "host:port" serving /healthz and /readyz; undefined when off or not bound. */
  healthAddress?: string;
  /** "host:port" serving /metrics; undefined when off or not bound. */
  metricsAddress?: string;
  /** Fails readiness, then stops listening. Call before stopping the executor. */
  close(): Promise<void>;
}

/**
 * Starts the monitoring endpoints of one process: Prometheus text on
 * `/metrics` at `monitoring_port`, and (with an executor) BuildBuddy's
 * health endpoints at `port`, both bound to `listen`. A port of -1 turns
 * its endpoint off; 0 picks a free port; when both ports are the same
 * number, one listener serves every path.
 */
export async function startMonitoring(opts: MonitoringOptions): Promise<Monitoring> {
  const { config, executor } = opts;
  const logger = moduleLogger(opts.logger, 'monitoring');

  // The metrics of this process: Node.js, version, executor, server.
  const registry = createProcessRegistry({ version: await readVersion() });
  if (opts.server) registerServerMetrics(registry, opts.server);
  if (executor) registerSystemMetrics(registry);
  const health = executor
    ? createHealthChecker({
        serverType: config.server_type,
        checks: executorHealthChecks(executor),
        registry,
      })
    : undefined;
  const all = executor ? Registry.merge([registry, executor.metrics]) : registry;

  // The endpoints, one listener per distinct port.
  const planned: Endpoint[] = [
    {
      purpose: 'metrics',
      portKey: 'monitoring_port',
      port: config.monitoring_port,
      routes: { '/metrics': metricsRoute(all) },
    },
  ];
  if (health)
    planned.push({
      purpose: 'health checks',
      portKey: 'port',
      port: config.port,
      routes: health.routes,
    });
  const bound = await listenAll(mergeSamePort(planned), config.listen, opts, logger);

  return {
    healthAddress: bound.find((b) => b.endpoint.routes['/readyz'])?.http.address,
    metricsAddress: bound.find((b) => b.endpoint.routes['/metrics'])?.http.address,
    close: async () => {
      health?.shutDown();
      await Promise.all(bound.map((b) => b.http.close()));
    },
  };
}

interface Endpoint {
  purpose: string;
  portKey: string;
  port: number;
  routes: Routes;
}

function metricsRoute(registry: Registry): Routes[string] {
  return async (_req, res) => {
    const text = await registry.metrics();
    res.writeHead(200, { 'content-type': registry.contentType });
    res.end(text);
  };
}

/** Endpoints on the same fixed port share one listener; -1 drops an endpoint. */
function mergeSamePort(endpoints: Endpoint[]): Endpoint[] {
  const merged: Endpoint[] = [];
  for (const e of endpoints) {
    if (e.port === DISABLED_PORT) continue;
    const same = e.port > 0 ? merged.find((m) => m.port === e.port) : undefined;
    if (!same) merged.push({ ...e, routes: { ...e.routes } });
    else {
      same.purpose = `${same.purpose} and ${e.purpose}`;
      same.portKey = `${same.portKey}\` and \`${e.portKey}`;
      Object.assign(same.routes, e.routes);
    }
  }
  return merged;
}

/**
 * Binds every endpoint. A failure either closes what was bound and throws,
 * or is logged and the endpoint skipped (see fatalOnBindError).
 */
async function listenAll(
  endpoints: Endpoint[],
  host: string,
  opts: MonitoringOptions,
  logger: Logger,
): Promise<{ endpoint: Endpoint; http: HttpEndpoint }[]> {
  const bound: { endpoint: Endpoint; http: HttpEndpoint }[] = [];
  for (const endpoint of endpoints) {
    try {
      const http = await serveHttp({ host, ...endpoint });
      bound.push({ endpoint, http });
      logger.debug({ address: http.address, purpose: endpoint.purpose }, 'Serving HTTP');
    } catch (err) {
      if (opts.fatalOnBindError) {
        await Promise.all(bound.map((b) => b.http.close()));
        throw err;
      }
      logger.warn(`${messageOf(err)}. Continuing without ${endpoint.purpose}.`);
    }
  }
  return bound;
}
