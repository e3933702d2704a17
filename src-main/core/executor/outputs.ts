import { lstat, mkdir, readlink, realpath, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { ContentStore } from '../cas/types.js';
import { digestKey, type BlobDigest } from '../digest.js';
import {
  failedPrecondition,
  GrpcError,
  internal,
  invalidArgument,
  messageOf,
  wrap,
} from '../errors.js';
import type { FileCache } from '../filecache.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';
import type {
  Command__Output,
  OutputDirectory,
  OutputFile,
  OutputSymlink,
} from '../proto/index.js';
import { forEachLimit } from '../cas/parallel.js';
import {
  buildLocalTree,
  hashFile,
  isExecutable,
  nodePropertiesOf,
  type LocalFile,
  type RequestedProperties,
} from './output-tree.js';
import { isInside, pathInside, relativePathProblem } from '../paths.js';

/** The output paths a Command declares, and which fields declared them. */
export interface OutputPaths {
  /** Every declared path, relative to the working directory, without duplicates. */
  paths: string[];
  /** Legacy output_files (empty when output_paths is used). */
  legacyFiles: string[];
  /** Legacy output_directories (empty when output_paths is used). */
  legacyDirectories: string[];
  /** True when output_paths is non-empty; the legacy fields are then ignored. */
  usesOutputPaths: boolean;
}

/** Value of Command.output_directory_format. */
export type OutputDirectoryFormat = Command__Output['output_directory_format'];

/** The outputs of one action, shaped for ActionResult, and what collecting them cost. */
export interface CollectedOutputs {
  output_files: OutputFile[];
  output_directories: OutputDirectory[];
  /** Filled only when the Command used output_paths. */
  output_symlinks: OutputSymlink[];
  /** Symlinks among legacy output_files. */
  output_file_symlinks: OutputSymlink[];
  /** Symlinks among legacy output_directories. */
  output_directory_symlinks: OutputSymlink[];
  stats: { files: number; bytesUploaded: number; durationMs: number };
}

/** Parallel uploads' inputs: a blob from memory or from a file. */
interface Blob {
  digest: BlobDigest;
  data?: Uint8Array;
  path?: string;
}

const CACHE_CONCURRENCY = 4;

/**
 * Output paths of a Command: output_paths when non-empty (REAPI v2.1+),
 * else the legacy output_files and output_directories.
 */
export function outputPathsOf(command: Command__Output): OutputPaths {
  const usesOutputPaths = command.output_paths.length > 0;
  const legacyFiles = usesOutputPaths ? [] : command.output_files;
  const legacyDirectories = usesOutputPaths ? [] : command.output_directories;
  const declared = usesOutputPaths ? command.output_paths : [...legacyFiles, ...legacyDirectories];
  return { paths: [...new Set(declared)], legacyFiles, legacyDirectories, usesOutputPaths };
}

/**
 * Rejects (INVALID_ARGUMENT, naming the value) a working_directory or output
 * path that is absolute, has a trailing '/', or has a segment that is
 * empty, '.' or '..'; an empty output path (except a legacy output
 * directory, where '' means the whole working directory); and a legacy
 * output file that is also declared as an output directory.
 */
export function checkOutputPaths(command: Command__Output): void {
  const workingProblem = relativePathProblem(command.working_directory, { allowEmpty: true });
  if (workingProblem)
    throw invalidArgument(
      `Invalid working directory "${command.working_directory}": ${workingProblem}`,
    );
  const check = (path: string, allowEmpty: boolean) => {
    const problem = relativePathProblem(path, { allowEmpty });
    if (problem) throw invalidArgument(`Invalid output path "${path}": ${problem}`);
  };
  for (const p of command.output_paths) check(p, false);
  for (const p of command.output_files) check(p, false);
  for (const p of command.output_directories) check(p, true);
  const directories = new Set(command.output_directories);
  const both = command.output_files.find((p) => directories.has(p));
  if (both !== undefined)
    throw invalidArgument(
      `Invalid output path "${both}": declared as both output file and output directory`,
    );
}

/**
 * Creates, before the run, the parent directories of every output path
 * and, like BuildBuddy (some Bazel rules rely on it), the legacy output
 * directories themselves. Never creates anything through a symlink that
 * leads outside `inputRoot` (default: the working directory); a parent that
 * exists as a file is FAILED_PRECONDITION. Call checkOutputPaths first.
 */
export async function createOutputParents(
  command: Command__Output,
  workingDir: string,
  inputRoot: string = workingDir,
): Promise<void> {
  const { paths, legacyDirectories } = outputPathsOf(command);
  const dirs = new Set(paths.map((p) => (p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '')));
  for (const d of legacyDirectories) dirs.add(d);
  dirs.delete('');
  if (dirs.size === 0) return;
  const root = await realpath(inputRoot);
  const realWorkingDir = await realpath(workingDir).catch(() => undefined);
  if (realWorkingDir === undefined || !isInside(root, realWorkingDir))
    throw invalidArgument(
      `Invalid working directory "${command.working_directory}": it is not a directory of the input root`,
    );
  for (const d of dirs) await mkdirInside(root, workingDir, d);
}

/** mkdir -p of relPath below base, one segment at a time, refusing to leave root. */
async function mkdirInside(root: string, base: string, relPath: string): Promise<void> {
  let current = base;
  for (const segment of relPath.split('/')) {
    current = join(current, segment);
    const st = await lstat(current).catch(() => undefined);
    if (st === undefined) {
      await mkdir(current).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
      continue;
    }
    if (st.isDirectory()) continue;
    const real = st.isSymbolicLink() ? await realpath(current).catch(() => undefined) : undefined;
    const isDir = real !== undefined && (await stat(real)).isDirectory();
    if (!isDir || !isInside(root, real))
      throw failedPrecondition(
        `Failed to create the parent directories of output path "${relPath}": "${current}" is not a directory inside the input root`,
      );
  }
}

/**
 * Collects the outputs of a finished action from `workingDir`, uploads
 * the blobs they need that the CAS lacks (file contents streamed from disk,
 * Tree blobs, and Directory blobs when the output directory format asks),
 * and returns the ActionResult fields. Only blobs FindMissingBlobs reports
 * missing are sent, and count in stats.bytesUploaded.
 *
 * Nothing is followed: an output path that is a symlink is reported as a
 * symlink with its target as written, and symlinks inside output
 * directories become SymlinkNodes. Missing outputs are omitted. A legacy
 * output file that is a directory (or a symlink to one), or a legacy output
 * directory that is a file (or a symlink to one), is FAILED_PRECONDITION.
 * FIFOs, sockets and devices are INVALID_ARGUMENT, as is an output path
 * whose parent resolves outside `inputRoot` (default: the working
 * directory) through a symlink. Files are executable when any x bit is set.
 *
 * When `cache` is given, output files are added to it after the upload
 * (outputs of one action are often inputs of the next).
 */
export async function collectOutputs(opts: {
  store: ContentStore;
  workingDir: string;
  command: Command__Output;
  cache?: FileCache;
  inputRoot?: string;
  outputDirectoryFormat?: OutputDirectoryFormat;
  logger?: Logger;
}): Promise<CollectedOutputs> {
  const started = Date.now();
  const log = moduleLogger(opts.logger ?? silentLogger, 'outputs');
  const format = opts.outputDirectoryFormat ?? opts.command.output_directory_format;
  const requested = new Set(opts.command.output_node_properties);
  const root = await realpath(opts.inputRoot ?? opts.workingDir).catch((err) => {
    throw internal(`Failed to collect outputs: ${messageOf(err)}`);
  });
  const declared = outputPathsOf(opts.command);
  const result: CollectedOutputs = emptyOutputs();
  const blobs: Blob[] = [];
  const files: LocalFile[] = [];

  // Inspect every declared path and build what it needs.
  const ctx: CollectContext = {
    workingDir: opts.workingDir,
    root,
    declared,
    requested,
    withDirectories: format !== 'TREE_ONLY',
  };
  for (const path of declared.paths) {
    const collected = await collectOne(path, ctx).catch((err) => {
      if (err instanceof GrpcError) throw err;
      throw internal(`Failed to collect output "${path}": ${messageOf(err)}`);
    });
    if (collected === undefined) continue;
    addCollected(result, collected);
    blobs.push(...collected.blobs);
    files.push(...collected.files);
  }

  // Upload the blobs the CAS lacks.
  const bytesUploaded = await upload(opts.store, blobs);

  // Offer the files to the file cache.
  if (opts.cache) await addToCache(opts.cache, files, log);

  result.stats = { files: files.length, bytesUploaded, durationMs: Date.now() - started };
  log.debug(result.stats, 'Outputs collected');
  return result;
}

function emptyOutputs(): CollectedOutputs {
  return {
    output_files: [],
    output_directories: [],
    output_symlinks: [],
    output_file_symlinks: [],
    output_directory_symlinks: [],
    stats: { files: 0, bytesUploaded: 0, durationMs: 0 },
  };
}

interface CollectContext {
  workingDir: string;
  root: string;
  declared: OutputPaths;
  requested: RequestedProperties;
  withDirectories: boolean;
}

/** One output path's ActionResult entry and the blobs and files behind it. */
interface Collected {
  file?: OutputFile;
  directory?: OutputDirectory;
  symlink?: {
    entry: OutputSymlink;
    field: 'output_symlinks' | 'output_file_symlinks' | 'output_directory_symlinks';
  };
  blobs: Blob[];
  files: LocalFile[];
}

function addCollected(result: CollectedOutputs, c: Collected): void {
  if (c.file) result.output_files.push(c.file);
  if (c.directory) result.output_directories.push(c.directory);
  if (c.symlink) result[c.symlink.field].push(c.symlink.entry);
}

/** Looks at one output path without following it; undefined when it does not exist. */
async function collectOne(path: string, ctx: CollectContext): Promise<Collected | undefined> {
  const abs = await locate(path, ctx);
  if (abs === undefined) return undefined;
  const st = await lstat(abs).catch(() => undefined);
  if (st === undefined) return undefined;
  const legacyFile = ctx.declared.legacyFiles.includes(path);
  const legacyDirectory = !ctx.declared.usesOutputPaths && !legacyFile;

  if (st.isSymbolicLink()) return collectSymlink(path, abs, ctx, legacyFile, legacyDirectory);
  if (st.isFile()) {
    if (legacyDirectory) throw failedPrecondition(`Output directory "${path}" is a regular file`);
    const digest = await hashFile(abs);
    const file: LocalFile = { path: abs, digest, executable: isExecutable(st), stat: st };
    const entry: OutputFile = { path, digest, is_executable: file.executable };
    const props = nodePropertiesOf(st, ctx.requested);
    if (props) entry.node_properties = props;
    return { file: entry, blobs: [{ digest, path: abs }], files: [file] };
  }
  if (st.isDirectory()) {
    if (legacyFile) throw failedPrecondition(`Output file "${path}" is a directory`);
    return collectDirectory(path, abs, ctx);
  }
  throw invalidArgument(`Output "${path}" is not a file, directory or symlink`);
}

/**
 * The absolute path of an output path, after checking that its parent
 * resolves inside the input root; undefined when the parent does not exist.
 */
async function locate(path: string, ctx: CollectContext): Promise<string | undefined> {
  const abs = path === '' ? ctx.workingDir : pathInside(ctx.workingDir, path);
  const parent = path === '' ? abs : dirname(abs);
  const realParent = await realpath(parent).catch(() => undefined);
  if (realParent === undefined) return undefined;
  if (!isInside(ctx.root, realParent))
    throw invalidArgument(`Output path "${path}" resolves outside the input root`);
  return abs;
}

async function collectSymlink(
  path: string,
  abs: string,
  ctx: CollectContext,
  legacyFile: boolean,
  legacyDirectory: boolean,
): Promise<Collected> {
  const entry: OutputSymlink = { path, target: await readlink(abs) };
  if (ctx.declared.usesOutputPaths)
    return { symlink: { entry, field: 'output_symlinks' }, blobs: [], files: [] };
  // Only the kind of what the link points to is checked; a dangling link is fine.
  const pointee = await stat(abs).catch(() => undefined);
  if (legacyFile && pointee?.isDirectory())
    throw failedPrecondition(`Output file "${path}" is a symlink to a directory`);
  if (legacyDirectory && pointee !== undefined && !pointee.isDirectory())
    throw failedPrecondition(
      `Output directory "${path}" is a symlink to something other than a directory`,
    );
  const field = legacyFile ? 'output_file_symlinks' : 'output_directory_symlinks';
  return { symlink: { entry, field }, blobs: [], files: [] };
}

async function collectDirectory(
  path: string,
  abs: string,
  ctx: CollectContext,
): Promise<Collected> {
  const tree = await buildLocalTree(abs, path, ctx.requested);
  const directory: OutputDirectory = { path, tree_digest: tree.treeDigest };
  const blobs: Blob[] = [{ digest: tree.treeDigest, data: tree.treeBytes }];
  if (ctx.withDirectories) {
    directory.root_directory_digest = tree.rootDigest;
    blobs.push(...tree.directories.map((d) => ({ digest: d.digest, data: d.bytes })));
  }
  blobs.push(...tree.files.map((f) => ({ digest: f.digest, path: f.path })));
  return { directory, blobs, files: tree.files };
}

/** Uploads the blobs the CAS lacks; returns their total size. */
async function upload(store: ContentStore, blobs: Blob[]): Promise<number> {
  const byKey = new Map(blobs.map((b) => [digestKey(b.digest), b]));
  try {
    const missing = await store.findMissing([...byKey.values()].map((b) => b.digest));
    if (missing.length === 0) return 0;
    await store.writeMany(missing.map((d) => byKey.get(digestKey(d))!));
    return missing.reduce((sum, d) => sum + d.size_bytes, 0);
  } catch (err) {
    throw wrap(err, 'Failed to upload outputs');
  }
}

/**
 * Adds output files to the file cache, skipping any that changed since they
 * were hashed (a process left behind could still be writing). Failures only
 * cost a later download, so they are logged, not thrown.
 */
async function addToCache(cache: FileCache, files: LocalFile[], log: Logger): Promise<void> {
  const unique = [
    ...new Map(files.map((f) => [`${digestKey(f.digest)}/${f.executable}`, f])).values(),
  ];
  await forEachLimit(unique, CACHE_CONCURRENCY, async (f) => {
    try {
      const now = await lstat(f.path);
      const same =
        now.ino === f.stat.ino && now.size === f.stat.size && now.mtimeMs === f.stat.mtimeMs;
      if (same) await cache.add({ digest: f.digest, executable: f.executable }, f.path);
    } catch (err) {
      log.warn({ digest: digestKey(f.digest), err: messageOf(err) }, 'Failed to cache output');
    }
  });
}
