import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, copyFile, mkdir, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { missingBlobsError, missingDigestsOf, type MissingBlob } from '../cas/missing.js';
import { forEachLimit } from '../cas/parallel.js';
import { fetchTree } from '../cas/tree.js';
import type { ContentStore } from '../cas/types.js';
import { checkDigest, digestKey, isEmptyDigest, type BlobDigest } from '../digest.js';
import { Code, codeOf, GrpcError, invalidArgument, messageOf, wrap } from '../errors.js';
import type { FileCache, FileCacheKey } from '../filecache.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';
import type { Directory__Output, NodeProperties__Output } from '../proto/index.js';
import {
  compareNames,
  describeDir,
  nameProblem,
  pathInside,
  symlinkTargetProblem,
} from '../paths.js';

/** What materializing one input root did. */
export interface InputTreeStats {
  /** Directories in the input root, the root itself included. */
  directories: number;
  files: number;
  symlinks: number;
  bytesDownloaded: number;
  filesDownloaded: number;
  /** Distinct files linked from the file cache instead of downloaded. */
  cacheHits: number;
  durationMs: number;
}

/** Most entries (files, directories, symlinks) an input root may expand to. */
export const MAX_INPUT_ENTRIES = 2_000_000;
/** Blob bytes fetched per readMany call for small files. */
const SMALL_FILE_GROUP_BYTES = 16 * 1024 * 1024;
/** Above this size a file is streamed straight to disk. */
const STREAM_FILE_BYTES = 2 * 1024 * 1024;
const CONCURRENCY = 4;
const DIR_MODE = 0o755;
const fileMode = (executable: boolean) => (executable ? 0o555 : 0o444);

/** Mode and modification time a node asks for, when present (NodeProperties). */
interface NodeProps {
  mode?: number;
  mtime?: Date;
}

interface PlannedFile {
  path: string;
  key: FileCacheKey;
  props?: NodeProps;
}

/** The validated input root, expanded into what to create, parents first. */
interface Plan {
  directories: { path: string; props?: NodeProps }[];
  files: PlannedFile[];
  symlinks: { path: string; target: string }[];
  /** Directories the CAS lacks, with where they were needed. */
  missing: MissingBlob[];
}

/**
 * Writes the input root `rootDigest` into `dir`, an empty directory of the
 * task's workspace, and returns what it did.
 *
 * The whole tree is fetched and validated before anything is written (see
 * validateDirectory): a malformed tree is INVALID_ARGUMENT naming the entry.
 * Blobs the CAS lacks (directories and the files that must be downloaded)
 * are reported together as FAILED_PRECONDITION with one MISSING violation
 * each, the form that makes Bazel re-upload them.
 *
 * Files come from the file cache when present (hardlinked; the cache keys in
 * use are pinned until this returns) and are downloaded otherwise, then
 * added to the cache. Inputs are read-only (0444, or 0555 when executable),
 * like the cache entries they share an inode with. A file whose FileNode
 * carries NodeProperties (unix_mode, mtime) gets a private copy with those
 * applied; directories get theirs after their contents are written (with the
 * owner's rwx bits always kept, so the workspace can be removed).
 *
 * Nothing is written outside `dir`: every destination is checked to lie
 * inside it, files and directories are created exclusively (never through an
 * existing entry), and symlinks are created last, so no write can pass
 * through one.
 *
 * Limitation: NodeProperties of symlinks are ignored.
 */
export async function materializeInputRoot(opts: {
  store: ContentStore;
  cache?: FileCache;
  rootDigest: BlobDigest;
  dir: string;
  logger?: Logger;
}): Promise<InputTreeStats> {
  const started = Date.now();
  const log = moduleLogger(opts.logger ?? silentLogger, 'input-tree');

  // Fetch and validate the whole tree; report missing directories (with any
  // missing files found so far) before writing anything.
  const fetched = await fetchTree(opts.store, opts.rootDigest).catch((err) => {
    throw wrap(err, 'Failed to fetch the input root');
  });
  const plan = planInputRoot(opts.rootDigest, fetched.directories, fetched.missing);
  if (plan.missing.length > 0) {
    const files = await missingFiles(opts.store, plan.files);
    throw missingInputs([...plan.missing, ...files]);
  }

  // Create the directories, then place files, then symlinks and the
  // directories' node properties.
  const release = opts.cache?.pin(plan.files.map((f) => f.key)) ?? (() => {});
  let placed: Awaited<ReturnType<typeof placeFiles>>;
  try {
    for (const d of plan.directories.slice(1))
      await mkdir(pathInside(opts.dir, d.path), { mode: DIR_MODE });
    placed = await placeFiles(opts.store, opts.cache, opts.dir, plan.files, log);
    for (const s of plan.symlinks) await symlink(s.target, pathInside(opts.dir, s.path));
    await applyDirectoryProps(opts.dir, plan.directories);
  } catch (err) {
    throw writeFailure(err);
  } finally {
    release();
  }

  const stats: InputTreeStats = {
    ...placed,
    directories: plan.directories.length,
    symlinks: plan.symlinks.length,
    durationMs: Date.now() - started,
  };
  log.debug(stats, 'Input root materialized');
  return stats;
}

/** GrpcErrors pass; a filesystem error (EEXIST, ENOSPC, …) is INTERNAL. */
function writeFailure(err: unknown): GrpcError {
  if (err instanceof GrpcError) return err;
  return new GrpcError(Code.INTERNAL, `Failed to write the input root: ${messageOf(err)}`);
}

/**
 * Expands the tree breadth-first from the root, validating every Directory
 * on the way (INVALID_ARGUMENT naming the entry). Directories absent from
 * `directories` become `missing` entries and are not expanded.
 */
function planInputRoot(
  root: BlobDigest,
  directories: Map<string, Directory__Output>,
  knownMissing: BlobDigest[],
): Plan {
  const plan: Plan = { directories: [], files: [], symlinks: [], missing: [] };
  const missingKeys = new Set(knownMissing.map(digestKey));
  const queue = [{ path: '', digest: root }];
  let entries = 0;
  for (let i = 0; i < queue.length; i++) {
    const { path, digest } = queue[i];
    const directory = directories.get(digestKey(digest));
    if (directory === undefined || missingKeys.has(digestKey(digest))) {
      const what = path === '' ? 'Input root directory' : `Input directory "${path}"`;
      plan.missing.push({ digest, description: what });
      continue;
    }
    validateDirectory(directory, path);
    entries += directory.files.length + directory.directories.length + directory.symlinks.length;
    if (entries > MAX_INPUT_ENTRIES)
      throw invalidArgument(`Invalid input root: it has more than ${MAX_INPUT_ENTRIES} entries`);
    plan.directories.push({ path, props: propsOf(directory.node_properties) });
    const at = (name: string) => (path === '' ? name : `${path}/${name}`);
    for (const f of directory.files) {
      const key = { digest: checkDigest(f.digest), executable: f.is_executable };
      plan.files.push({ path: at(f.name), key, props: propsOf(f.node_properties) });
    }
    for (const d of directory.directories)
      queue.push({ path: at(d.name), digest: checkDigest(d.digest) });
    for (const s of directory.symlinks) plan.symlinks.push({ path: at(s.name), target: s.target });
  }
  return plan;
}

/**
 * Checks one Directory found at `path` (relative to the input root): every
 * name is a single non-empty segment other than '.' and '..'; files,
 * directories and symlinks are each sorted by name, and no name appears
 * twice across the three lists; every digest is well-formed; no symlink
 * target is absolute or leaves the input root (lexically, see paths.ts).
 */
export function validateDirectory(directory: Directory__Output, path: string): void {
  const where = describeDir(path);
  const fail = (problem: string) => invalidArgument(`Invalid input root: ${problem}`);
  const seen = new Set<string>();
  const lists = [
    { kind: 'files', nodes: directory.files },
    { kind: 'directories', nodes: directory.directories },
    { kind: 'symlinks', nodes: directory.symlinks },
  ];
  for (const { kind, nodes } of lists) {
    nodes.forEach((node, i) => {
      const problem = nameProblem(node.name);
      if (problem) throw fail(`entry "${node.name}" in ${where}: ${problem}`);
      if (seen.has(node.name)) throw fail(`entry "${node.name}" appears twice in ${where}`);
      seen.add(node.name);
      const previous = nodes[i - 1]?.name;
      if (previous !== undefined && compareNames(previous, node.name) > 0)
        throw fail(
          `${kind} in ${where} are not sorted by name ("${previous}" before "${node.name}")`,
        );
    });
  }
  const at = (name: string) => (path === '' ? name : `${path}/${name}`);
  for (const node of [...directory.files, ...directory.directories]) {
    try {
      checkDigest(node.digest);
    } catch (err) {
      throw fail(`entry "${at(node.name)}": ${messageOf(err)}`);
    }
  }
  const segments = path === '' ? [] : path.split('/');
  for (const s of directory.symlinks) {
    const problem = symlinkTargetProblem(segments, s.target);
    if (problem) throw fail(`symlink "${at(s.name)}": ${problem}`);
  }
}

function propsOf(p: NodeProperties__Output | null | undefined): NodeProps | undefined {
  if (!p || (!p.unix_mode && !p.mtime)) return undefined;
  const props: NodeProps = {};
  if (p.unix_mode) props.mode = p.unix_mode.value & 0o777;
  if (p.mtime) props.mtime = new Date(p.mtime.seconds * 1000 + Math.floor(p.mtime.nanos / 1e6));
  return props;
}

/** Files of the plan (by distinct blob) that the CAS lacks, as missing entries. */
async function missingFiles(store: ContentStore, files: PlannedFile[]): Promise<MissingBlob[]> {
  const firstPath = new Map<string, string>();
  for (const f of files)
    if (!firstPath.has(digestKey(f.key.digest))) firstPath.set(digestKey(f.key.digest), f.path);
  const digests = [...new Map(files.map((f) => [digestKey(f.key.digest), f.key.digest])).values()];
  const absent = await store.findMissing(digests.filter((d) => !isEmptyDigest(d)));
  return absent.map((digest) => ({
    digest,
    description: `Input file "${firstPath.get(digestKey(digest))}"`,
  }));
}

function missingInputs(blobs: MissingBlob[]): GrpcError {
  return missingBlobsError(Code.FAILED_PRECONDITION, 'Failed to materialize the input root', blobs);
}

/** The files of one distinct (digest, executable) key and where they go. */
interface FileGroup {
  key: FileCacheKey;
  paths: string[];
}

/**
 * Places every file: cache hits are linked, the rest checked with
 * FindMissingBlobs (all missing ones reported at once), downloaded, added to
 * the cache; then copies for repeated files and private copies for files
 * with node properties.
 */
async function placeFiles(
  store: ContentStore,
  cache: FileCache | undefined,
  dir: string,
  files: PlannedFile[],
  log: Logger,
): Promise<Omit<InputTreeStats, 'durationMs' | 'directories' | 'symlinks'>> {
  const groups = groupFiles(
    dir,
    files.filter((f) => !isEmptyDigest(f.key.digest)),
  );
  for (const f of files.filter((f) => isEmptyDigest(f.key.digest)))
    await writeFile(pathInside(dir, f.path), '', { flag: 'wx', mode: fileMode(f.key.executable) });

  const misses: FileGroup[] = [];
  await forEachLimit(groups, CONCURRENCY, async (g) => {
    if (!(cache && (await cache.linkInto(g.key, g.paths[0])))) misses.push(g);
  });
  const absent = await store.findMissing(misses.map((g) => g.key.digest));
  if (absent.length > 0) throw missingInputs(describeMissing(absent, misses, dir));

  await download(store, misses).catch((err) => {
    throw downloadFailure(err, misses, dir);
  });
  if (cache) await addToCache(cache, misses, log);
  await forEachLimit(groups, CONCURRENCY, (g) => placeCopies(cache, g));
  await forEachLimit(
    files.filter((f) => f.props),
    CONCURRENCY,
    (f) => makePrivate(dir, f),
  );

  const bytesDownloaded = misses.reduce((sum, g) => sum + g.key.digest.size_bytes, 0);
  const cacheHits = groups.length - misses.length;
  return { files: files.length, bytesDownloaded, filesDownloaded: misses.length, cacheHits };
}

/** Groups files by cache key; paths are absolute and checked to lie inside dir. */
function groupFiles(dir: string, files: PlannedFile[]): FileGroup[] {
  const groups = new Map<string, FileGroup>();
  for (const f of files) {
    const id = `${digestKey(f.key.digest)}/${f.key.executable}`;
    const group = groups.get(id) ?? { key: f.key, paths: [] };
    group.paths.push(pathInside(dir, f.path));
    groups.set(id, group);
  }
  return [...groups.values()];
}

/**
 * Downloads each group's blob to its first path: small blobs together
 * through readMany (at most 16 MiB in memory per call), large ones streamed
 * to disk.
 */
async function download(store: ContentStore, groups: FileGroup[]): Promise<void> {
  const small = groups.filter((g) => g.key.digest.size_bytes <= STREAM_FILE_BYTES);
  const large = groups.filter((g) => g.key.digest.size_bytes > STREAM_FILE_BYTES);
  const jobs = [
    ...bySize(small, SMALL_FILE_GROUP_BYTES).map((part) => async () => {
      const blobs = await store.readMany(part.map((g) => g.key.digest));
      for (const g of part) {
        const data = blobs.get(digestKey(g.key.digest))!;
        await writeFile(g.paths[0], data, { flag: 'wx', mode: fileMode(g.key.executable) });
      }
    }),
    ...large.map((g) => async () => {
      await store.readToFile(g.key.digest, g.paths[0]);
      await chmod(g.paths[0], fileMode(g.key.executable));
    }),
  ];
  await forEachLimit(jobs, CONCURRENCY, (job) => job());
}

function bySize(groups: FileGroup[], maxBytes: number): FileGroup[][] {
  const parts: FileGroup[][] = [];
  let current: FileGroup[] = [];
  let bytes = 0;
  for (const g of groups) {
    if (current.length > 0 && bytes + g.key.digest.size_bytes > maxBytes) {
      parts.push(current);
      current = [];
      bytes = 0;
    }
    current.push(g);
    bytes += g.key.digest.size_bytes;
  }
  if (current.length > 0) parts.push(current);
  return parts;
}

/**
 * A blob that vanished between FindMissingBlobs and its download (NOT_FOUND
 * with MISSING details from the ContentStore) becomes FAILED_PRECONDITION,
 * so the client re-uploads it. Other errors keep their code.
 */
function downloadFailure(err: unknown, groups: FileGroup[], dir: string): GrpcError {
  const vanished = missingDigestsOf(err);
  if (codeOf(err) === Code.NOT_FOUND && vanished.length > 0)
    return missingInputs(describeMissing(vanished, groups, dir));
  return wrap(err, 'Failed to download the input root');
}

function describeMissing(digests: BlobDigest[], groups: FileGroup[], dir: string): MissingBlob[] {
  const pathOf = new Map(groups.map((g) => [digestKey(g.key.digest), g.paths[0]]));
  return digests.map((digest) => {
    const path = relative(dir, pathOf.get(digestKey(digest)) ?? dir);
    return { digest, description: `Input file "${path.split(sep).join('/')}"` };
  });
}

/** Adds downloaded files to the cache; a failure only costs a later download. */
async function addToCache(cache: FileCache, groups: FileGroup[], log: Logger): Promise<void> {
  await forEachLimit(groups, CONCURRENCY, async (g) => {
    await cache
      .add(g.key, g.paths[0])
      .catch((err) =>
        log.warn({ digest: digestKey(g.key.digest), err: messageOf(err) }, 'Failed to cache input'),
      );
  });
}

/** Fills a group's other paths from the cache, or by copying its first path. */
async function placeCopies(cache: FileCache | undefined, g: FileGroup): Promise<void> {
  for (const path of g.paths.slice(1)) {
    if (cache && (await cache.linkInto(g.key, path))) continue;
    await copyFile(g.paths[0], path, constants.COPYFILE_EXCL);
  }
}

/**
 * Replaces a (possibly hardlinked) file with a private copy and applies its
 * node properties, so the cache entry's shared inode is never changed.
 */
async function makePrivate(dir: string, f: PlannedFile): Promise<void> {
  const path = pathInside(dir, f.path);
  const tmp = join(dirname(path), `.idlebuild-${randomBytes(8).toString('hex')}`);
  try {
    await copyFile(path, tmp, constants.COPYFILE_EXCL);
    await chmod(tmp, f.props?.mode ?? fileMode(f.key.executable));
    if (f.props?.mtime) await utimes(tmp, f.props.mtime, f.props.mtime);
    await rename(tmp, path);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** Applies directories' node properties, deepest first, after their contents exist. */
async function applyDirectoryProps(dir: string, directories: Plan['directories']): Promise<void> {
  for (const d of [...directories].reverse()) {
    if (!d.props) continue;
    const path = pathInside(dir, d.path);
    if (d.props.mode !== undefined) await chmod(path, d.props.mode | 0o700);
    if (d.props.mtime) await utimes(path, d.props.mtime, d.props.mtime);
  }
}
