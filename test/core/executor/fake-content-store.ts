// A strict in-memory ContentStore for unit tests of code that wraps the
// seam (input tree, outputs): blobs in a Map, every call counted, every
// write verified, reads of absent blobs NOT_FOUND with MISSING details like
// the real client.
import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { missingBlobsError } from '../../../src-main/core/cas/missing.js';
import { encodeDirectory } from '../../../src-main/core/cas/tree.js';
import type { ContentStore } from '../../../src-main/core/cas/types.js';
import {
  digestKey,
  digestOf,
  isEmptyDigest,
  matchesDigest,
  type BlobDigest,
} from '../../../src-main/core/digest.js';
import { Code, invalidArgument, notFound } from '../../../src-main/core/errors.js';
import {
  decode,
  type ActionResult__Output,
  type Directory,
  type Directory__Output,
} from '../../../src-main/core/proto/index.js';

export interface FakeContentStore extends ContentStore {
  blobs: Map<string, Buffer>;
  calls: Record<string, number>;
  /** Digests asked for in readMany and readToFile, in order. */
  reads: string[];
  /** Digests written by writeMany, in order. */
  writes: string[];
  put(data: Uint8Array | string): BlobDigest;
  putDirectory(directory: Directory): BlobDigest;
  /** Stores raw bytes under their digest as a Directory (for non-canonical encodings). */
  putRaw(bytes: Buffer): BlobDigest;
  remove(digest: BlobDigest): void;
}

export function createFakeContentStore(): FakeContentStore {
  const blobs = new Map<string, Buffer>();
  const calls: Record<string, number> = {};
  const reads: string[] = [];
  const writes: string[] = [];
  const count = (name: string) => (calls[name] = (calls[name] ?? 0) + 1);
  const has = (d: BlobDigest) => isEmptyDigest(d) || blobs.has(digestKey(d));
  const get = (d: BlobDigest) => (isEmptyDigest(d) ? Buffer.alloc(0) : blobs.get(digestKey(d)));
  const missingError = (digests: BlobDigest[]) =>
    missingBlobsError(
      Code.NOT_FOUND,
      'Failed to read blobs',
      digests.map((digest) => ({ digest, description: 'fake' })),
    );

  return {
    blobs,
    calls,
    reads,
    writes,
    put(data) {
      const bytes = Buffer.from(data);
      const digest = digestOf(bytes);
      blobs.set(digestKey(digest), bytes);
      return digest;
    },
    putDirectory(directory) {
      const { digest, bytes } = encodeDirectory(directory);
      blobs.set(digestKey(digest), bytes);
      return digest;
    },
    putRaw(bytes) {
      const digest = digestOf(bytes);
      blobs.set(digestKey(digest), bytes);
      return digest;
    },
    remove(digest) {
      blobs.delete(digestKey(digest));
    },
    async findMissing(digests) {
      count('findMissing');
      return digests.filter((d) => !has(d));
    },
    async read(digest) {
      count('read');
      const data = get(digest);
      if (!data) throw missingError([digest]);
      return data;
    },
    async readMany(digests) {
      count('readMany');
      reads.push(...digests.map(digestKey));
      const absent = digests.filter((d) => !has(d));
      if (absent.length > 0) throw missingError(absent);
      return new Map(digests.map((d) => [digestKey(d), get(d)!]));
    },
    async readToFile(digest, path) {
      count('readToFile');
      reads.push(digestKey(digest));
      const data = get(digest);
      if (!data) throw missingError([digest]);
      await pipeline(Readable.from([data]), createWriteStream(path, { flags: 'wx' }));
    },
    async writeMany(items) {
      count('writeMany');
      for (const item of items) {
        const data = item.data ? Buffer.from(item.data) : await readFile(item.path!);
        if (!matchesDigest(data, item.digest))
          throw invalidArgument(`Blob "${digestKey(item.digest)}" does not match its digest`);
        writes.push(digestKey(item.digest));
        blobs.set(digestKey(item.digest), data);
      }
    },
    async getTree(root) {
      count('getTree');
      const rootBytes = get(root);
      if (!rootBytes) throw notFound(`Directory "${digestKey(root)}" not found`);
      const out: Directory__Output[] = [];
      const seen = new Set<string>();
      const queue = [root];
      while (queue.length > 0) {
        const d = queue.shift()!;
        if (seen.has(digestKey(d))) continue;
        seen.add(digestKey(d));
        const bytes = get(d);
        if (!bytes) continue;
        const dir = decode('build.bazel.remote.execution.v2.Directory', bytes);
        out.push(dir);
        for (const child of dir.directories) if (child.digest) queue.push(child.digest);
      }
      return out;
    },
    async getActionResult(): Promise<ActionResult__Output | undefined> {
      count('getActionResult');
      return undefined;
    },
  };
}
