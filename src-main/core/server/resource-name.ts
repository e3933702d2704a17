import { checkDigest, type BlobDigest } from '../digest.js';
import { GrpcError, invalidArgument } from '../errors.js';

/** A parsed ByteStream download name: `{instance}/blobs/{hash}/{size}`. */
export interface ReadResourceName {
  instanceName: string;
  digest: BlobDigest;
}

/**
 * A parsed ByteStream upload name:
 * `{instance}/uploads/{uuid}/blobs/{hash}/{size}[/{metadata}]`.
 */
export interface WriteResourceName {
  instanceName: string;
  uploadId: string;
  digest: BlobDigest;
  /** Everything after the size, unused by this server. */
  metadata: string;
}

/** Segments that REAPI forbids as instance-name segments. */
const RESERVED = new Set([
  'blobs',
  'uploads',
  'actions',
  'actionResults',
  'operations',
  'capabilities',
  'compressed-blobs',
]);

/**
 * Digest function names (lower-case DigestFunction values) that may appear
 * between "blobs/" and the hash. REAPI requires the segment to be omitted for
 * SHA-256; we tolerate "sha256" all the same and reject every other function.
 */
const DIGEST_FUNCTION_NAMES = new Set([
  'sha256',
  'sha1',
  'md5',
  'vso',
  'sha384',
  'sha512',
  'murmur3',
  'sha256tree',
  'blake3',
  'gitsha1',
]);

const DECIMAL = /^(0|[1-9][0-9]*)$/;

/**
 * Parses a ByteStream Read resource name. The instance name may be empty or
 * span several segments; it is returned but not otherwise interpreted.
 * Throws INVALID_ARGUMENT for anything else, including compressed-blobs
 * names (we advertise no compressors) and hostile segments such as "..".
 */
export function parseReadResourceName(name: string): ReadResourceName {
  const segments = splitName(name);
  const at = segments.findIndex((s) => s === 'blobs' || s === 'compressed-blobs');
  if (at < 0) throw badName(name, 'expected "{instance}/blobs/{hash}/{size}"');
  rejectCompressed(name, segments[at]);
  const instanceName = parseInstanceName(name, segments.slice(0, at));
  const { digest, rest } = parseBlobPath(name, segments.slice(at + 1));
  if (rest.length > 0) throw badName(name, 'unexpected segments after the size');
  return { instanceName, digest };
}

/**
 * Parses a ByteStream Write (or QueryWriteStatus) resource name. Throws
 * INVALID_ARGUMENT as parseReadResourceName does.
 */
export function parseWriteResourceName(name: string): WriteResourceName {
  const segments = splitName(name);
  const at = segments.indexOf('uploads');
  const shape = 'expected "{instance}/uploads/{uuid}/blobs/{hash}/{size}"';
  if (at < 0 || segments.length < at + 3) throw badName(name, shape);
  const uploadId = segments[at + 1];
  if (RESERVED.has(uploadId)) throw badName(name, shape);
  const kind = segments[at + 2];
  rejectCompressed(name, kind);
  if (kind !== 'blobs') throw badName(name, shape);
  const instanceName = parseInstanceName(name, segments.slice(0, at));
  const { digest, rest } = parseBlobPath(name, segments.slice(at + 3));
  return { instanceName, uploadId, digest, metadata: rest.join('/') };
}

/** Splits on "/" after rejecting empty, "." and ".." segments and control characters. */
function splitName(name: string): string[] {
  if (typeof name !== 'string' || name.length === 0)
    throw invalidArgument('Resource name is missing');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f\\]/.test(name))
    throw badName(name, 'it contains control characters or backslashes');
  const segments = name.split('/');
  if (segments.some((s) => s === '' || s === '.' || s === '..'))
    throw badName(name, 'it contains an empty, "." or ".." segment');
  return segments;
}

function parseInstanceName(name: string, segments: string[]): string {
  const reserved = segments.find((s) => RESERVED.has(s));
  if (reserved) throw badName(name, `the instance name contains the reserved word "${reserved}"`);
  return segments.join('/');
}

/** Parses `[{digest_function}/]{hash}/{size}` and returns what follows. */
function parseBlobPath(name: string, segments: string[]): { digest: BlobDigest; rest: string[] } {
  let i = 0;
  if (DIGEST_FUNCTION_NAMES.has(segments[0] ?? '')) {
    if (segments[0] !== 'sha256')
      throw invalidArgument(
        `Resource name ${quote(name)} uses digest function "${segments[0]}", which this server ` +
          'does not support; use SHA256',
      );
    i = 1;
  }
  const hash = segments[i];
  const size = segments[i + 1];
  if (hash === undefined || size === undefined) throw badName(name, 'the digest is missing');
  if (!DECIMAL.test(size)) throw badName(name, `the size "${size}" is not a decimal integer`);
  try {
    return { digest: checkDigest({ hash, size_bytes: size }), rest: segments.slice(i + 2) };
  } catch (err) {
    throw badName(name, (err as GrpcError).message);
  }
}

function rejectCompressed(name: string, segment: string): void {
  if (segment === 'compressed-blobs')
    throw invalidArgument(
      `Resource name ${quote(name)} asks for a compressed blob, but this server advertises no ` +
        'compressors; use an uncompressed "blobs/" resource name',
    );
}

function badName(name: string, why: string): GrpcError {
  return invalidArgument(`Resource name ${quote(name)} is not valid: ${why}`);
}

/** The name in double quotes, escaped and shortened for an error message. */
function quote(name: string): string {
  return JSON.stringify(name.length > 300 ? `${name.slice(0, 300)}…` : name);
}
