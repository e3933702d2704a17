import type { BlobStore } from '../cas/types.js';
import { checkDigest, digestKey, type BlobDigest } from '../digest.js';
import { invalidArgument, notFound } from '../errors.js';
import { decode, type Directory__Output } from '../proto/index.js';

/** One Directory of a tree, with its digest and encoded size. */
export interface TreeEntry {
  digest: BlobDigest;
  directory: Directory__Output;
}

/**
 * Yields every Directory of the tree rooted at `root`, breadth-first, each
 * distinct Directory once (in the order of its first appearance), so the
 * order is the same on every walk of one tree, which GetTree paging relies
 * on. NOT_FOUND if the root is missing; missing subdirectories are skipped
 * (REAPI lets GetTree return the part of the tree that is present). A blob
 * that does not decode as a Directory is INVALID_ARGUMENT.
 */
export async function* walkTree(store: BlobStore, root: BlobDigest): AsyncGenerator<TreeEntry> {
  const rootBytes = await store.get(root);
  if (rootBytes === undefined)
    throw notFound(`Root directory "${digestKey(root)}" is not in the CAS`);
  const seen = new Set([digestKey(root)]);
  let level: TreeEntry[] = [{ digest: root, directory: decodeDirectory(root, rootBytes) }];
  while (level.length > 0) {
    const next: TreeEntry[] = [];
    for (const entry of level) {
      yield entry;
      for (const child of entry.directory.directories) {
        const digest = checkDigest(child.digest);
        if (seen.has(digestKey(digest))) continue;
        seen.add(digestKey(digest));
        const bytes = await store.get(digest);
        if (bytes !== undefined) next.push({ digest, directory: decodeDirectory(digest, bytes) });
      }
    }
    level = next;
  }
}

function decodeDirectory(digest: BlobDigest, bytes: Buffer): Directory__Output {
  try {
    return decode('build.bazel.remote.execution.v2.Directory', bytes);
  } catch (err) {
    throw invalidArgument(
      `Blob "${digestKey(digest)}" is not a Directory: ${(err as Error).message}`,
    );
  }
}
