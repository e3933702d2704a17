import { createHash } from 'node:crypto';
import { invalidArgument } from './errors.js';

/** A content digest as REAPI writes it: lower-case hex hash and size in bytes. */
export interface BlobDigest {
  hash: string;
  size_bytes: number;
}

/** SHA-256 is the one digest function Idlebuild serves and verifies. */
export const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

const SHA256_HEX = /^[0-9a-f]{64}$/;

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function digestOf(data: Uint8Array): BlobDigest {
  return { hash: sha256Hex(data), size_bytes: data.length };
}

/** "hash/size", the form used in resource names and as a map key. */
export function digestKey(d: { hash: string; size_bytes: number | string }): string {
  return `${d.hash}/${d.size_bytes}`;
}

/**
 * Checks that a digest from the wire is well-formed for SHA-256 and returns
 * it with a numeric size. Throws INVALID_ARGUMENT naming the bad value.
 */
export function checkDigest(
  d: { hash?: string; size_bytes?: number | string | null } | null | undefined,
): BlobDigest {
  if (!d) throw invalidArgument('Digest is missing');
  const hash = d.hash ?? '';
  const size = Number(d.size_bytes ?? 0);
  if (!SHA256_HEX.test(hash))
    throw invalidArgument(`Digest hash "${hash}" is not a lower-case SHA-256 hex string`);
  if (!Number.isSafeInteger(size) || size < 0)
    throw invalidArgument(`Digest size "${d.size_bytes}" is not a non-negative integer`);
  return { hash, size_bytes: size };
}

export function isEmptyDigest(d: BlobDigest): boolean {
  return d.size_bytes === 0 && d.hash === EMPTY_SHA256;
}

/** True when data has exactly the given digest. */
export function matchesDigest(data: Uint8Array, d: BlobDigest): boolean {
  return data.length === d.size_bytes && sha256Hex(data) === d.hash;
}
