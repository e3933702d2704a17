import type { BlobDigest } from '../digest.js';
import { Code, GrpcError } from '../errors.js';
import { packAny } from '../proto/index.js';

/**
 * FAILED_PRECONDITION with one PreconditionFailure violation of type MISSING
 * per blob, subject "blobs/<hash>/<size>": the form that makes Bazel upload
 * the blobs again and retry. The violations travel in the status details
 * (`grpc-status-details-bin`, see toServiceError in grpc-service.ts).
 */
export function missingBlobsError(what: string, digests: BlobDigest[]): GrpcError {
  const violations = digests.map((d) => ({
    type: 'MISSING',
    subject: `blobs/${d.hash}/${d.size_bytes}`,
    description: `${what} is missing from the CAS`,
  }));
  const list = digests.map((d) => `"${d.hash}/${d.size_bytes}"`).join(', ');
  return new GrpcError(Code.FAILED_PRECONDITION, `${what} not found in the CAS: ${list}`, [
    packAny('google.rpc.PreconditionFailure', { violations }),
  ]);
}
