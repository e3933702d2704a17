import type { BlobDigest } from '../digest.js';
import { Code, GrpcError } from '../errors.js';
import { packAny, unpackAny } from '../proto/index.js';

/** A blob the CAS lacks, with what it was needed for ("File \"src/a.c\""). */
export interface MissingBlob {
  digest: BlobDigest;
  description: string;
}

const LISTED_IN_MESSAGE = 5;

/** The PreconditionFailure subject REAPI uses for a missing blob: "blobs/{hash}/{size}". */
export function missingSubject(digest: BlobDigest): string {
  return `blobs/${digest.hash}/${digest.size_bytes}`;
}

/**
 * An error for blobs missing from the CAS in the form REAPI clients act on:
 * a google.rpc.PreconditionFailure detail with one MISSING violation per
 * blob. Bazel re-uploads the named blobs when the code is
 * FAILED_PRECONDITION; the CAS client uses NOT_FOUND with the same details,
 * so callers can turn it into that form.
 */
export function missingBlobsError(code: Code, context: string, blobs: MissingBlob[]): GrpcError {
  const subjects = blobs.map((b) => `"${missingSubject(b.digest)}"`);
  const listed = subjects.slice(0, LISTED_IN_MESSAGE).join(', ');
  const more =
    subjects.length > LISTED_IN_MESSAGE ? ` and ${subjects.length - LISTED_IN_MESSAGE} more` : '';
  const noun = blobs.length === 1 ? 'blob is' : `${blobs.length} blobs are`;
  const violations = blobs.map((b) => ({
    type: 'MISSING',
    subject: missingSubject(b.digest),
    description: b.description,
  }));
  return new GrpcError(code, `${context}: ${noun} missing from the CAS: ${listed}${more}`, [
    packAny('google.rpc.PreconditionFailure', { violations }),
  ]);
}

/** The digests named by MISSING violations in an error's details (empty when none). */
export function missingDigestsOf(err: unknown): BlobDigest[] {
  if (!(err instanceof GrpcError)) return [];
  const digests: BlobDigest[] = [];
  for (const detail of err.details) {
    const failure = unpackAny('google.rpc.PreconditionFailure', detail);
    for (const v of failure?.violations ?? []) {
      const match = /^blobs\/([0-9a-f]+)\/(\d+)$/.exec(v.subject);
      if (v.type === 'MISSING' && match)
        digests.push({ hash: match[1], size_bytes: Number(match[2]) });
    }
  }
  return digests;
}
