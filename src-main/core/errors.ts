import { status as Code } from '@grpc/grpc-js';

export { Code };

/**
 * The one error type of Idlebuild: a message plus a gRPC status code, and
 * optionally google.rpc.Status details (packed Any messages). Every failure
 * that can reach a client or a scheduler is a GrpcError, so the code decides
 * what the other side does next (retry, re-upload, give up).
 */
export class GrpcError extends Error {
  readonly code: Code;
  readonly details: { type_url: string; value: Buffer }[];

  constructor(code: Code, message: string, details: { type_url: string; value: Buffer }[] = []) {
    super(message);
    this.name = 'GrpcError';
    this.code = code;
    this.details = details;
  }
}

/** The gRPC code of any thrown value: GrpcError and grpc-js errors keep theirs. */
export function codeOf(err: unknown): Code {
  if (err instanceof GrpcError) return err.code;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'number' && code >= 0 && code <= 16) return code as Code;
  return Code.UNKNOWN;
}

export function messageOf(err: unknown): string {
  if (err instanceof GrpcError) return err.message;
  // grpc-js errors carry the server's message in `details`.
  const details = (err as { details?: unknown } | null)?.details;
  if (err instanceof Error) return typeof details === 'string' && details ? details : err.message;
  return String(err);
}

/**
 * Adds context in our one phrase style, keeping the code and details:
 * wrap(err, 'Failed to download input root') → "Failed to download input root: <cause>".
 */
export function wrap(err: unknown, context: string): GrpcError {
  const details = err instanceof GrpcError ? err.details : [];
  return new GrpcError(codeOf(err), `${context}: ${messageOf(err)}`, details);
}

export const invalidArgument = (msg: string) => new GrpcError(Code.INVALID_ARGUMENT, msg);
export const notFound = (msg: string) => new GrpcError(Code.NOT_FOUND, msg);
export const failedPrecondition = (msg: string) => new GrpcError(Code.FAILED_PRECONDITION, msg);
export const internal = (msg: string) => new GrpcError(Code.INTERNAL, msg);
export const unavailable = (msg: string) => new GrpcError(Code.UNAVAILABLE, msg);
export const outOfRange = (msg: string) => new GrpcError(Code.OUT_OF_RANGE, msg);
export const resourceExhausted = (msg: string) => new GrpcError(Code.RESOURCE_EXHAUSTED, msg);
