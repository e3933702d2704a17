import * as grpc from '@grpc/grpc-js';

import { redactTarget } from '../config.js';
import { invalidArgument } from '../errors.js';

/**
 * A gRPC target as BuildBuddy's dialer understands `executor.app_target`
 * and `executor.cache_target`:
 * - `grpcs://host[:port]`: TLS with the system roots, port 443 by default;
 * - `grpc://host[:port]`: plaintext (port 443 by default, as in gRPC);
 * - `unix:///path/to/socket`: plaintext over a Unix domain socket;
 * - no scheme: treated as `grpcs://`.
 * Userinfo (`grpcs://user:pass@host`) is not part of the address: it is sent
 * as `authorization: user:pass` metadata on every call.
 */
export interface GrpcTarget {
  /** The address in grpc-js form: "host:port", "[::1]:port" or "unix:///path". */
  address: string;
  tls: boolean;
  /** Value of the `authorization` metadata, from the URL's userinfo. */
  authorization?: string;
}

const SCHEMES = new Set(['grpc:', 'grpcs:', 'unix:']);

/** Parses a target URL; INVALID_ARGUMENT names the bad value. */
export function parseTarget(target: string): GrpcTarget {
  const text = target.trim();
  if (text === '') throw invalidArgument('Target is empty: set a URL such as "grpcs://host:443"');
  if (text.startsWith('unix:')) return { address: text, tls: false };
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `grpcs://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw invalidArgument(
      `Target "${redactTarget(target)}" is not a valid URL such as "grpcs://host:443"`,
    );
  }
  if (!SCHEMES.has(url.protocol) || url.hostname === '')
    throw invalidArgument(
      `Target "${redactTarget(target)}" must look like "grpcs://host[:port]", "grpc://host:port" or "unix:///path"`,
    );
  const tls = url.protocol === 'grpcs:';
  const address = `${url.hostname}:${url.port || '443'}`;
  if (url.username === '' && url.password === '') return { address, tls };
  const authorization = url.password ? `${url.username}:${url.password}` : url.username;
  return { address, tls, authorization };
}

/**
 * Channel options the Go executor uses: keepalive pings after 30 s idle
 * with a 20 s timeout, allowed without active calls; no receive size limit.
 */
export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 20_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.max_receive_message_length': -1,
  'grpc.max_send_message_length': -1,
};

/** The credentials and options for a client of `target`. */
export function clientSettings(target: GrpcTarget): {
  credentials: grpc.ChannelCredentials;
  options: grpc.ClientOptions;
} {
  const credentials = target.tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure();
  const interceptors = target.authorization ? [authorizationInterceptor(target.authorization)] : [];
  return { credentials, options: { ...CHANNEL_OPTIONS, interceptors } };
}

/** Creates a client for one service of `target` (e.g. grpcPackage().scheduler.Scheduler). */
export function createClient<T>(
  service: new (
    address: string,
    credentials: grpc.ChannelCredentials,
    options?: grpc.ClientOptions,
  ) => unknown,
  target: GrpcTarget,
): T {
  const { credentials, options } = clientSettings(target);
  return new service(target.address, credentials, options) as T;
}

function authorizationInterceptor(value: string): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', value);
        next(metadata, listener);
      },
    });
}

/**
 * What to do about a failed connection, in the user's terms, from the text
 * of a gRPC error; undefined when the error says nothing recognisable.
 */
export function connectionHint(message: string): string | undefined {
  if (/wrong version number|WRONG_VERSION_NUMBER|packet length too long/i.test(message)) {
    return (
      'the server does not speak TLS: use a grpc:// target in executor.app_target ' +
      '(a target without a scheme means grpcs://)'
    );
  }
  if (/ECONNREFUSED|No connection established/i.test(message)) {
    return (
      'nothing answers at executor.app_target: start the server (e.g. idlebuild server) ' +
      'or correct the address'
    );
  }
  if (/ENOTFOUND|EAI_AGAIN|Name resolution failed/i.test(message)) {
    return 'the host name in executor.app_target does not resolve';
  }
  if (/certificate|self[- ]signed|CERT_/i.test(message)) {
    return "the server's TLS certificate was not accepted: check the host name and the CA roots";
  }
  return undefined;
}
