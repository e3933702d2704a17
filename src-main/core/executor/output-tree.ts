// Digests of local files and directories, for uploading outputs: a file's
// SHA-256 computed by streaming it, and a directory turned into the REAPI
// Tree (root Directory plus every descendant Directory) with the files it
// references.
import { createHash } from 'node:crypto';
import { createReadStream, type Stats } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { digestOf, type BlobDigest } from '../digest.js';
import { invalidArgument } from '../errors.js';
import {
  encode,
  type Directory,
  type DirectoryNode,
  type FileNode,
  type NodeProperties,
  type SymlinkNode,
} from '../proto/index.js';
import { forEachLimit } from '../cas/parallel.js';
import { encodeDirectory } from '../cas/tree.js';
import { compareNames } from '../paths.js';

const HASH_CONCURRENCY = 4;

/** A regular file found in an output, with its digest and the lstat it was hashed after. */
export interface LocalFile {
  /** Absolute path. */
  path: string;
  digest: BlobDigest;
  executable: boolean;
  stat: Stats;
}

/** A local directory as a REAPI Tree, ready to upload. */
export interface LocalTree {
  treeDigest: BlobDigest;
  treeBytes: Buffer;
  rootDigest: BlobDigest;
  /** Every distinct Directory of the tree (root included), encoded. */
  directories: { digest: BlobDigest; bytes: Buffer }[];
  /** Every regular file of the tree. */
  files: LocalFile[];
}

/** Which NodeProperties to report ("unix_mode", "mtime"; others are ignored). */
export type RequestedProperties = ReadonlySet<string>;

/** SHA-256 and size of a file's bytes, streamed (never read whole into memory). */
export async function hashFile(path: string): Promise<BlobDigest> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(path) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { hash: hash.digest('hex'), size_bytes: size };
}

/** True when any execute bit is set. */
export function isExecutable(stat: Stats): boolean {
  return (stat.mode & 0o111) !== 0;
}

/** The requested NodeProperties of a file or directory, or undefined when none are. */
export function nodePropertiesOf(
  stat: Stats,
  requested: RequestedProperties,
): NodeProperties | undefined {
  const props: NodeProperties = {};
  if (requested.has('unix_mode')) props.unix_mode = { value: stat.mode & 0o7777 };
  if (requested.has('mtime')) {
    const seconds = Math.floor(stat.mtimeMs / 1000);
    props.mtime = { seconds, nanos: Math.round((stat.mtimeMs - seconds * 1000) * 1e6) };
  }
  return props.unix_mode || props.mtime ? props : undefined;
}

/** One entry of the directory walk, before files are hashed. */
interface Node {
  name: string;
  path: string;
  stat: Stats;
  children?: Node[];
  target?: string;
  file?: LocalFile;
}

/**
 * Builds the Tree of the directory at `dir` without following symlinks:
 * regular files become FileNodes (executable when any x bit is set),
 * directories DirectoryNodes, symlinks SymlinkNodes with their target as
 * written. Entries are sorted by name; Tree.children are the distinct
 * descendant Directories sorted by digest, so equal contents always give the
 * same Tree digest. Anything else (a FIFO, socket or device) is
 * INVALID_ARGUMENT naming it by `displayPath` (the output path of `dir`).
 */
export async function buildLocalTree(
  dir: string,
  displayPath: string,
  requested: RequestedProperties,
): Promise<LocalTree> {
  const root: Node = { name: '', path: dir, stat: await lstat(dir) };
  root.children = await walk(dir, displayPath);
  const files = collectFiles(root);
  await forEachLimit(files, HASH_CONCURRENCY, async (node) => {
    const digest = await hashFile(node.path);
    node.file = { path: node.path, digest, executable: isExecutable(node.stat), stat: node.stat };
  });

  const distinct = new Map<string, { digest: BlobDigest; bytes: Buffer; directory: Directory }>();
  const rootEntry = toDirectory(root, requested, distinct);
  const children = [...distinct.values()]
    .filter((d) => d !== rootEntry)
    .sort((a, b) => compareNames(a.digest.hash, b.digest.hash));
  const treeBytes = encode('build.bazel.remote.execution.v2.Tree', {
    root: rootEntry.directory,
    children: children.map((c) => c.directory),
  });
  return {
    treeDigest: digestOf(treeBytes),
    treeBytes,
    rootDigest: rootEntry.digest,
    directories: [...distinct.values()].map(({ digest, bytes }) => ({ digest, bytes })),
    files: files.map((n) => n.file!),
  };
}

async function walk(dir: string, displayPath: string): Promise<Node[]> {
  const names = (await readdir(dir)).sort(compareNames);
  const nodes: Node[] = [];
  for (const name of names) {
    const path = join(dir, name);
    const shown = displayPath === '' ? name : `${displayPath}/${name}`;
    const stat = await lstat(path);
    const node: Node = { name, path, stat };
    if (stat.isDirectory()) node.children = await walk(path, shown);
    else if (stat.isSymbolicLink()) node.target = await readlink(path);
    else if (!stat.isFile())
      throw invalidArgument(
        `Output "${shown}" is ${kindOf(stat)}; outputs may hold only files, directories and symlinks`,
      );
    nodes.push(node);
  }
  return nodes;
}

function collectFiles(node: Node): Node[] {
  if (node.children === undefined) return node.stat.isFile() ? [node] : [];
  return node.children.flatMap(collectFiles);
}

/** Builds the Directory of a walked node bottom-up, recording each distinct one. */
function toDirectory(
  node: Node,
  requested: RequestedProperties,
  distinct: Map<string, { digest: BlobDigest; bytes: Buffer; directory: Directory }>,
): { digest: BlobDigest; bytes: Buffer; directory: Directory } {
  const files: FileNode[] = [];
  const directories: DirectoryNode[] = [];
  const symlinks: SymlinkNode[] = [];
  for (const child of node.children ?? []) {
    if (child.children !== undefined) {
      const sub = toDirectory(child, requested, distinct);
      directories.push({ name: child.name, digest: sub.digest });
    } else if (child.target !== undefined) {
      symlinks.push({ name: child.name, target: child.target });
    } else {
      const f = child.file!;
      const props = nodePropertiesOf(child.stat, requested);
      files.push({
        name: child.name,
        digest: f.digest,
        is_executable: f.executable,
        node_properties: props,
      });
    }
  }
  const directory: Directory = { files, directories, symlinks };
  const props = nodePropertiesOf(node.stat, requested);
  if (props) directory.node_properties = props;
  const { digest, bytes } = encodeDirectory(directory);
  const key = `${digest.hash}/${digest.size_bytes}`;
  const entry = distinct.get(key) ?? { digest, bytes, directory };
  distinct.set(key, entry);
  return entry;
}

function kindOf(stat: Stats): string {
  if (stat.isFIFO()) return 'a FIFO';
  if (stat.isSocket()) return 'a socket';
  if (stat.isCharacterDevice()) return 'a character device';
  if (stat.isBlockDevice()) return 'a block device';
  return 'of an unknown file type';
}
