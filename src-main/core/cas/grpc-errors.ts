import type * as grpc from '@grpc/grpc-js';
import { codeOf, GrpcError, messageOf } from '../errors.js';
import { decode } from '../proto/index.js';

const STATUS_DETAILS_KEY = 'grpc-status-details-bin';

/**
 * Turns an error from a grpc-js call into a GrpcError with the same code,
 * the server's message (without grpc-js's "5 NOT_FOUND: " prefix) and the
 * google.rpc.Status details the server attached, so a PreconditionFailure
 * from a remote CAS survives the trip.
 */
export function fromCallError(err: unknown): GrpcError {
  if (err instanceof GrpcError) return err;
  return new GrpcError(codeOf(err), messageOf(err), statusDetailsOf(err));
}

/** Context in our phrase style ("Failed to read blob …: <cause>"), keeping code and details. */
export function callFailure(err: unknown, context: string): GrpcError {
  const cause = fromCallError(err);
  return new GrpcError(cause.code, `${context}: ${cause.message}`, cause.details);
}

function statusDetailsOf(err: unknown): { type_url: string; value: Buffer }[] {
  const metadata = (err as { metadata?: grpc.Metadata } | null)?.metadata;
  const raw = metadata?.get?.(STATUS_DETAILS_KEY)?.[0];
  if (!Buffer.isBuffer(raw)) return [];
  try {
    return decode('google.rpc.Status', raw).details.map((any) => ({
      type_url: any.type_url,
      value: Buffer.from(any.value),
    }));
  } catch {
    return [];
  }
}
