import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import { failedPrecondition, GrpcError, invalidArgument, messageOf } from '../errors.js';

/** Handlers by exact path; only GET and HEAD reach them. */
export type Routes = Record<
  string,
  (req: IncomingMessage, res: ServerResponse) => void | Promise<void>
>;

/** A listening HTTP endpoint. */
export interface HttpEndpoint {
  /** "host:port" as bound (IPv6 hosts in brackets), e.g. "127.0.0.1:9090". */
  address: string;
  /** Stops listening and drops open connections. */
  close(): Promise<void>;
}

export interface ServeOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  routes: Routes;
  /** What the endpoint is for and which config key sets its port, for errors. */
  purpose: string;
  portKey: string;
}

/**
 * Serves `routes` over plain HTTP on host:port. A port that cannot be
 * bound is a GrpcError naming the address, what it was for and the config
 * key to change.
 */
export async function serveHttp(opts: ServeOptions): Promise<HttpEndpoint> {
  const server = createServer((req, res) => void route(opts.routes, req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(bindError(err, opts)));
    server.listen({ host: opts.host, port: opts.port }, () => resolve());
  });
  const { address, port } = server.address() as AddressInfo;
  return {
    address: `${address.includes(':') ? `[${address}]` : address}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** Writes a plain-text response. */
export function sendText(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'cache-control': 'no-store',
  });
  res.end(body.endsWith('\n') ? body : `${body}\n`);
}

async function route(routes: Routes, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://localhost').pathname;
  const handler = Object.hasOwn(routes, path) ? routes[path] : undefined;
  if (!handler) return sendText(res, 404, `Not found: ${path.slice(0, 200)}`);
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    return sendText(res, 405, `Method ${req.method} not allowed`);
  }
  try {
    await handler(req, res);
  } catch (err) {
    if (!res.headersSent) sendText(res, 500, messageOf(err));
    else res.destroy();
  }
}

function bindError(err: Error, opts: ServeOptions): GrpcError {
  const where = `Failed to listen on ${opts.host}:${opts.port} for ${opts.purpose}`;
  const disable = `set \`${opts.portKey}\` to a free port, or to -1 to disable it`;
  switch ((err as NodeJS.ErrnoException).code) {
    case 'EADDRINUSE':
      return failedPrecondition(
        `${where} (config key \`${opts.portKey}\`): address in use; ${disable}`,
      );
    case 'EACCES':
      return failedPrecondition(
        `${where} (config key \`${opts.portKey}\`): permission denied; ${disable}`,
      );
    case 'EADDRNOTAVAIL':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return invalidArgument(
        `${where}: "${opts.host}" is not an address of this machine; change the config key ` +
          '`listen` (e.g. 127.0.0.1, or 0.0.0.0 for all interfaces)',
      );
    default:
      return failedPrecondition(`${where} (config key \`${opts.portKey}\`): ${err.message}`);
  }
}
