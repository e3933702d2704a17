import type { IncomingMessage, ServerResponse } from 'node:http';

import { Gauge, type Registry } from 'prom-client';

import type { Executor } from '../executor/executor.js';
import { sendText, type Routes } from './http.js';

/** One readiness check, named as BuildBuddy names its checks. */
export interface HealthCheck {
  name: string;
  /** Undefined while healthy, else what is wrong, in a few words. */
  problem(): string | undefined;
}

/**
 * Liveness and readiness, as BuildBuddy's executor serves them on its
 * health port: `/healthz` answers 200 "OK" while the process runs;
 * `/readyz` answers 200 "OK" while every check passes and shutdown has not
 * begun, else 503 naming the failing checks. Both answer 500 unless the
 * request names the configured server type, in the `server-type` header or
 * the `server-type` query parameter.
 */
export interface HealthChecker {
  /** The `/healthz` and `/readyz` handlers. */
  readonly routes: Routes;
  /** Readiness fails from now on; called when shutdown begins. */
  shutDown(): void;
}

export interface HealthCheckerOptions {
  /** The `server_type` config key; BuildBuddy's default is prod-buildbuddy-executor. */
  serverType: string;
  checks: HealthCheck[];
  /** Where to register `buildbuddy_health_check_status{health_check_name}` (1 healthy, 0 not). */
  registry?: Registry;
}

/** Creates the checker; it runs the checks on each request and scrape. */
export function createHealthChecker(opts: HealthCheckerOptions): HealthChecker {
  let shuttingDown = false;
  if (opts.registry) registerStatusGauge(opts.registry, opts.checks);
  const guarded = (handler: (res: ServerResponse) => void) => {
    return (req: IncomingMessage, res: ServerResponse) => {
      const problem = serverTypeProblem(req, opts.serverType);
      if (problem) sendText(res, 500, problem);
      else handler(res);
    };
  };
  return {
    routes: {
      '/healthz': guarded((res) => sendText(res, 200, 'OK')),
      '/readyz': guarded((res) => {
        const failing = shuttingDown ? ['shutting down'] : failingChecks(opts.checks);
        if (failing.length === 0) sendText(res, 200, 'OK');
        else sendText(res, 503, `Not ready: ${failing.join('; ')}`);
      }),
    },
    shutDown: () => void (shuttingDown = true),
  };
}

/** The executor's readiness: its registration stream to the scheduler is up. */
export function executorHealthChecks(executor: Pick<Executor, 'snapshot'>): HealthCheck[] {
  return [
    {
      name: 'registered_to_scheduler',
      problem: () =>
        executor.snapshot().connected ? undefined : 'not registered with the scheduler',
    },
  ];
}

function failingChecks(checks: HealthCheck[]): string[] {
  return checks.flatMap((check) => {
    const problem = check.problem();
    return problem === undefined ? [] : [`${check.name} (${problem})`];
  });
}

/** Why the request is refused, or undefined when it names the right server type. */
function serverTypeProblem(req: IncomingMessage, expected: string): string | undefined {
  const header = req.headers['server-type'];
  const query = new URL(req.url ?? '/', 'http://localhost').searchParams.get('server-type');
  const given = ((Array.isArray(header) ? header[0] : header) ?? query ?? '').slice(0, 100);
  if (given === expected || query === expected) return undefined;
  return (
    `Server type "${given}" unknown: send the header "server-type: ${expected}" ` +
    `or the query parameter "?server-type=${expected}" (config key \`server_type\`)`
  );
}

function registerStatusGauge(registry: Registry, checks: HealthCheck[]): void {
  new Gauge({
    name: 'buildbuddy_health_check_status',
    help: 'Health check status: 1 healthy, 0 failing.',
    labelNames: ['health_check_name'],
    registers: [registry],
    collect() {
      for (const check of checks)
        this.set({ health_check_name: check.name }, check.problem() === undefined ? 1 : 0);
    },
  });
}
