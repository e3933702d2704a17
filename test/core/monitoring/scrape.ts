// Reading Prometheus text as a scraper would, for monitoring tests.
import { createServer, type Server } from 'node:net';

/** GETs a URL; returns the status and body. */
export async function get(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { headers });
  return { status: res.status, body: await res.text() };
}

/** The /metrics text of a monitoring address ("host:port"). */
export async function scrape(address: string): Promise<string> {
  const { status, body } = await get(`http://${address}/metrics`);
  if (status !== 200) throw new Error(`/metrics answered ${status}: ${body}`);
  return body;
}

/**
 * The value of the sample `name` whose labels are exactly `labels`, or
 * undefined when the text has no such sample.
 */
export function sample(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const wanted = JSON.stringify(Object.entries(labels).sort());
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const pairs = [...(match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)];
    const got = JSON.stringify(pairs.map((p) => [p[1], p[2]]).sort());
    if (got === wanted) return Number(match[3]);
  }
  return undefined;
}

/** Holds a loopback port so that binding it fails; close() frees it. */
export async function occupyPort(): Promise<{ port: number; close(): Promise<void> }> {
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return { port, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

/** A loopback port that was free a moment ago. */
export async function freePort(): Promise<number> {
  const held = await occupyPort();
  await held.close();
  return held.port;
}

/** Polls until `condition` holds or `timeoutMs` passes. */
export async function until(
  condition: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
