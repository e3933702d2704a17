import type { BlobDigest } from '../digest.js';
import type { ActionResult, ActionResult__Output, Directory__Output } from '../proto/index.js';
import type { Readable } from 'node:stream';

/**
 * The embedded server's content-addressable storage: blobs on disk under the
 * data directory, indexed in memory. Every write is verified against its
 * digest (INVALID_ARGUMENT on mismatch, nothing stored); reads return only
 * verified bytes. The empty blob is always present.
 */
export interface BlobStore {
  /** The digests among `digests` that the store does not hold. */
  findMissing(digests: BlobDigest[]): BlobDigest[];
  /** The whole blob, or undefined when absent. */
  get(digest: BlobDigest): Promise<Buffer | undefined>;
  /** A stream of the blob from `offset`, or undefined when absent. */
  createReadStream(digest: BlobDigest, offset?: number): Readable | undefined;
  /** Verifies and stores a whole blob. */
  put(digest: BlobDigest, data: Uint8Array): Promise<void>;
  /**
   * Verifies and stores a blob already written to a temporary file (renamed
   * into place), for ByteStream uploads larger than memory should hold.
   */
  putFile(digest: BlobDigest, tempPath: string): Promise<void>;
  /** A fresh path for a temporary file on the store's filesystem. */
  tempPath(): string;
}

/** The embedded server's Action Cache, keyed by action digest. */
export interface ActionCacheStore {
  get(actionDigest: BlobDigest): Promise<ActionResult__Output | undefined>;
  put(actionDigest: BlobDigest, result: ActionResult): Promise<void>;
}

/**
 * The executor's view of a remote CAS and Action Cache (REAPI client over
 * gRPC). Every blob it reads is verified against its digest; a missing blob
 * is NOT_FOUND naming the digest. Small blobs travel in batches, large ones
 * over ByteStream.
 */
export interface ContentStore {
  findMissing(digests: BlobDigest[]): Promise<BlobDigest[]>;
  /** Reads and verifies one blob into memory. */
  read(digest: BlobDigest): Promise<Buffer>;
  /** Reads many blobs (batched where small), verified; NOT_FOUND if any is missing. */
  readMany(digests: BlobDigest[]): Promise<Map<string, Buffer>>;
  /** Streams one blob into a new file at `path`, verified before it resolves. */
  readToFile(digest: BlobDigest, path: string): Promise<void>;
  /** Uploads blobs that the CAS is missing (FindMissingBlobs first). */
  writeMany(blobs: { digest: BlobDigest; data?: Uint8Array; path?: string }[]): Promise<void>;
  /** Every Directory below (and including) root, via GetTree with paging. */
  getTree(root: BlobDigest): Promise<Directory__Output[]>;
  /** The cached ActionResult, or undefined on NOT_FOUND. */
  getActionResult(actionDigest: BlobDigest): Promise<ActionResult__Output | undefined>;
}
