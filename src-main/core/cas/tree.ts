import type { ContentStore } from './types.js';
import { checkDigest, digestKey, digestOf, EMPTY_SHA256, type BlobDigest } from '../digest.js';
import { Code, codeOf, invalidArgument, messageOf } from '../errors.js';
import { decode, encode, type Directory, type Directory__Output } from '../proto/index.js';
import { missingDigestsOf } from './missing.js';

/** The digest of the empty Directory, which is the empty blob. */
export const EMPTY_DIRECTORY_DIGEST: BlobDigest = { hash: EMPTY_SHA256, size_bytes: 0 };

const EMPTY_DIRECTORY: Directory__Output = {
  files: [],
  directories: [],
  symlinks: [],
  node_properties: null,
};

/** A Directory's canonical bytes and their digest. */
export function encodeDirectory(directory: Directory | Directory__Output): {
  digest: BlobDigest;
  bytes: Buffer;
} {
  const bytes = encode('build.bazel.remote.execution.v2.Directory', directory as Directory);
  return { digest: digestOf(bytes), bytes };
}

/** The Directories of a tree by digest key, and the digests the CAS lacks. */
export interface FetchedTree {
  directories: Map<string, Directory__Output>;
  missing: BlobDigest[];
}

/**
 * Fetches every Directory reachable from `root`, verified against the
 * digests that reference it.
 *
 * GetTree returns decoded Directories without their digests, so each one is
 * re-encoded canonically and indexed by the digest of those bytes. Clients
 * such as Bazel upload canonical bytes, so every reference resolves. A
 * Directory whose stored bytes are not canonical (unknown fields, fields out
 * of order, defaults written) does not resolve that way; it is then fetched
 * by digest with readMany (which verifies the bytes) and decoded. Digests the
 * CAS lacks, the root included, are returned in `missing`; they are never an
 * error here. A blob that is not a Directory is INVALID_ARGUMENT.
 */
export async function fetchTree(store: ContentStore, root: BlobDigest): Promise<FetchedTree> {
  const tree: FetchedTree = {
    directories: new Map([[digestKey(EMPTY_DIRECTORY_DIGEST), EMPTY_DIRECTORY]]),
    missing: [],
  };
  if (!(await addTreeOf(store, root, tree))) return tree;
  const visited = new Set<string>();
  let unresolved = unresolvedBelow([root], tree, visited);
  while (unresolved.length > 0) {
    const absent = await store.findMissing(unresolved);
    const absentKeys = new Set(absent.map(digestKey));
    const present = unresolved.filter((d) => !absentKeys.has(digestKey(d)));
    tree.missing.push(...absent);
    tree.missing.push(...(await readDirectories(store, present, tree)));
    unresolved = unresolvedBelow(present, tree, visited);
  }
  return tree;
}

/** Adds what GetTree returns for root; false when the root itself is missing. */
async function addTreeOf(store: ContentStore, root: BlobDigest, tree: FetchedTree) {
  if (tree.directories.has(digestKey(root))) return true;
  try {
    for (const directory of await store.getTree(root))
      tree.directories.set(digestKey(encodeDirectory(directory).digest), directory);
    return true;
  } catch (err) {
    if (codeOf(err) !== Code.NOT_FOUND) throw err;
    tree.missing.push(root);
    return false;
  }
}

/**
 * Digests referenced below `starts` (through Directories already held) that
 * are neither held nor known missing; the starts themselves count when not
 * held. Directories in `visited` are not walked again.
 */
function unresolvedBelow(starts: BlobDigest[], tree: FetchedTree, visited: Set<string>) {
  const known = new Set(tree.missing.map(digestKey));
  const unresolved = new Map<string, BlobDigest>();
  const stack = [...starts];
  while (stack.length > 0) {
    const digest = stack.pop()!;
    const key = digestKey(digest);
    if (visited.has(key) || known.has(key)) continue;
    const directory = tree.directories.get(key);
    if (directory === undefined) {
      unresolved.set(key, digest);
      continue;
    }
    visited.add(key);
    for (const child of directory.directories) {
      const childDigest = wellFormed(child.digest);
      if (childDigest) stack.push(childDigest);
    }
  }
  return [...unresolved.values()];
}

/** Reads and decodes Directories by digest; returns the ones that vanished meanwhile. */
async function readDirectories(
  store: ContentStore,
  digests: BlobDigest[],
  tree: FetchedTree,
): Promise<BlobDigest[]> {
  if (digests.length === 0) return [];
  let blobs: Map<string, Buffer>;
  try {
    blobs = await store.readMany(digests);
  } catch (err) {
    const vanished = missingDigestsOf(err);
    if (codeOf(err) !== Code.NOT_FOUND || vanished.length === 0) throw err;
    const vanishedKeys = new Set(vanished.map(digestKey));
    const rest = digests.filter((d) => !vanishedKeys.has(digestKey(d)));
    return [...vanished, ...(await readDirectories(store, rest, tree))];
  }
  for (const [key, bytes] of blobs) {
    try {
      tree.directories.set(key, decode('build.bazel.remote.execution.v2.Directory', bytes));
    } catch (err) {
      throw invalidArgument(
        `Invalid input root: blob "${key}" is not a Directory: ${messageOf(err)}`,
      );
    }
  }
  return [];
}

/** The digest when well-formed; malformed ones are reported by the caller's validation. */
function wellFormed(
  d: { hash?: string; size_bytes?: number | string } | null,
): BlobDigest | undefined {
  try {
    return checkDigest(d);
  } catch {
    return undefined;
  }
}
