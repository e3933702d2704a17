import * as grpc from '@grpc/grpc-js';
import { Code, codeOf, GrpcError, invalidArgument, messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import { encode } from '../proto/index.js';

/**
 * One gRPC service ready for `server.addService(definition, implementation)`.
 * The embedded server's composer creates the grpc.Server and adds each one.
 */
export interface GrpcService {
  definition: grpc.ServiceDefinition;
  implementation: grpc.UntypedServiceImplementation;
}

/**
 * Converts any thrown value into the status a client receives. GrpcErrors
 * keep their code and message, and their details travel as the standard
 * `grpc-status-details-bin` trailer (an encoded google.rpc.Status). Anything
 * else is INTERNAL.
 */
export function toServiceError(err: unknown): Partial<grpc.StatusObject> {
  const code = err instanceof GrpcError ? err.code : internalCode(err);
  const details = messageOf(err);
  const metadata = new grpc.Metadata();
  if (err instanceof GrpcError && err.details.length > 0) {
    const status = encode('google.rpc.Status', { code, message: details, details: err.details });
    metadata.set('grpc-status-details-bin', status);
  }
  return { code, details, metadata };
}

/** grpc-js errors keep their code; programming and I/O errors become INTERNAL. */
function internalCode(err: unknown): Code {
  const code = codeOf(err);
  return code === Code.UNKNOWN ? Code.INTERNAL : code;
}

/**
 * Adapts an async function to a unary handler: its result is the response,
 * anything it throws becomes the status (see toServiceError). Server-side
 * failures (INTERNAL, UNKNOWN) are logged at error, client mistakes at debug.
 */
export function unaryHandler<Req, Res>(
  log: Logger,
  rpc: string,
  fn: (request: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    fn(call.request, call).then(
      (response) => callback(null, response),
      (err: unknown) => callback(logFailure(log, rpc, err)),
    );
  };
}

/**
 * Adapts an async function to a server-streaming handler: it writes its
 * messages (see sendMessage) and the call ends OK when it resolves, or with
 * the thrown error's status.
 */
export function serverStreamHandler<Req, Res>(
  log: Logger,
  rpc: string,
  fn: (request: Req, call: grpc.ServerWritableStream<Req, Res>) => Promise<void>,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    fn(call.request, call).then(
      () => call.end(),
      (err: unknown) => {
        if (!call.cancelled) call.emit('error', logFailure(log, rpc, err));
      },
    );
  };
}

export function logFailure(log: Logger, rpc: string, err: unknown): Partial<grpc.StatusObject> {
  const status = toServiceError(err);
  const serverSide = status.code === Code.INTERNAL || status.code === Code.UNKNOWN;
  log[serverSide ? 'error' : 'debug'](
    { rpc, code: status.code, err: status.details },
    'RPC failed',
  );
  return status;
}

/**
 * Writes one message to a server stream, waiting for the client to take it
 * when the stream's buffer is full. Rejects with CANCELLED when the client
 * goes away, so a producer never waits forever.
 */
export async function sendMessage<Res>(
  call: grpc.ServerWritableStream<unknown, Res>,
  message: Res,
) {
  if (call.cancelled) throw new GrpcError(Code.CANCELLED, 'The client cancelled the call');
  if (call.write(message)) return;
  await new Promise<void>((resolve, reject) => {
    const onDrain = () => settle(resolve);
    const onCancel = () =>
      settle(() => reject(new GrpcError(Code.CANCELLED, 'The client cancelled the call')));
    const settle = (then: () => void) => {
      call.off('drain', onDrain);
      call.off('cancelled', onCancel);
      then();
    };
    call.on('drain', onDrain);
    call.on('cancelled', onCancel);
  });
}

/**
 * Accepts the digest functions this server serves: SHA256, or UNKNOWN (unset,
 * which REAPI defines as SHA256 for older clients). Anything else is
 * INVALID_ARGUMENT.
 */
export function checkDigestFunction(value: string | number | null | undefined): void {
  if (value == null || value === '' || value === 'UNKNOWN' || value === 'SHA256') return;
  if (value === 0 || value === 1) return;
  throw invalidArgument(`Digest function "${value}" is not supported; this server supports SHA256`);
}
