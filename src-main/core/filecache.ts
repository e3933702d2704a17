import { randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import {
  chmod,
  copyFile,
  link,
  mkdir,
  readdir,
  rename,
  rm,
  stat,
  unlink,
  utimes,
} from 'node:fs/promises';
import { join } from 'node:path';
import type { BlobDigest } from './digest.js';
import { GrpcError, internal, invalidArgument, messageOf } from './errors.js';
import { moduleLogger, silentLogger, type Logger } from './log.js';

export interface FileCacheKey {
  digest: BlobDigest;
  executable: boolean;
}

/**
 * The executor's local file cache: an on-disk LRU of input files keyed by
 * digest and executable bit, so repeated inputs are hardlinked into task
 * workspaces instead of downloaded again.
 *
 * Entries live as `<directory>/<hash>` and `<directory>/<hash>.executable`,
 * read-only (0444 / 0555), next to `<directory>/_tmp/` for files being added.
 * The index is in memory and rebuilt from the directory at startup, so the
 * cache survives restarts; LRU order is persisted as each entry's access time,
 * which the cache sets itself on every add and hit.
 *
 * One cache instance owns its directory: two processes must not share it
 * (each would remove the other's files in `_tmp/` at startup, and each would
 * count only its own additions).
 *
 * Limitation: a hardlinked input shares its inode with the cache entry. The
 * read-only mode stops accidental writes, but an action running as the
 * executor's user can chmod the file and then modify the cached entry, and
 * an executor running as root ignores the mode altogether.
 */
export interface FileCache {
  /** Hardlinks the cached entry to destPath (copies when hardlinking fails, e.g. across filesystems or at the link-count limit). Returns false on a miss. Counts a hit/miss and refreshes LRU order. */
  linkInto(key: FileCacheKey, destPath: string): Promise<boolean>;
  /** Adds an already-verified file by hardlinking srcPath into the cache (copy when linking fails); entries are made read-only (0444, or 0555 when executable). No-op when present. Evicts least-recently-used unpinned entries beyond the size limit. */
  add(key: FileCacheKey, srcPath: string): Promise<void>;
  /** Pins entries so eviction skips them until the returned release function is called (pins nest). */
  pin(keys: FileCacheKey[]): () => void;
  stats(): {
    entries: number;
    bytes: number;
    maxBytes: number;
    hits: number;
    misses: number;
    evictions: number;
  };
}

interface Entry {
  size: number;
  /** Modification time kept as it was when access times are refreshed. */
  mtimeMs: number;
}

const TMP = '_tmp';
const LOAD_BATCH = 256;
const ENTRY_NAME = /^[0-9a-f]{64}(\.executable)?$/;
/** Link errors after which a copy is made instead: another filesystem, link-count limit, no hardlinks. */
const COPY_INSTEAD = new Set(['EXDEV', 'EMLINK', 'EPERM', 'ENOTSUP', 'EOPNOTSUPP']);

const entryName = (key: FileCacheKey) => key.digest.hash + (key.executable ? '.executable' : '');
const modeOf = (executable: boolean) => (executable ? 0o555 : 0o444);

/**
 * Opens (creating it if needed) the file cache in directory, removing files
 * left in `_tmp/` by an earlier process and evicting down to maxSizeBytes.
 * Files with names other than entry names are left alone and not counted.
 */
export async function createFileCache(opts: {
  directory: string;
  maxSizeBytes: number;
  logger?: Logger;
}): Promise<FileCache> {
  const logger = moduleLogger(opts.logger ?? silentLogger, 'filecache');
  const dir = opts.directory;
  const tmpDir = join(dir, TMP);
  try {
    await mkdir(dir, { recursive: true });
    await rm(tmpDir, { recursive: true, force: true });
    await mkdir(tmpDir);
  } catch (err) {
    throw failure(err, `Failed to open file cache "${dir}"`);
  }
  const cache = new LocalFileCache(dir, tmpDir, opts.maxSizeBytes, logger);
  await cache.load();
  return cache;
}

class LocalFileCache implements FileCache {
  /** Entries by file name, least recently used first (Map keeps insertion order). */
  private readonly index = new Map<string, Entry>();
  private readonly pins = new Map<string, number>();
  private readonly adding = new Map<string, Promise<void>>();
  private bytes = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;
  /** Last access time written, in ms; strictly increasing so LRU order survives a restart. */
  private clock = 0;

  constructor(
    private readonly dir: string,
    private readonly tmpDir: string,
    private readonly maxBytes: number,
    private readonly logger: Logger,
  ) {}

  /** Rebuilds the index from the directory, oldest access time first. */
  async load(): Promise<void> {
    const names = (await readdir(this.dir)).filter((n) => ENTRY_NAME.test(n));
    const found: { name: string; st: Stats }[] = [];
    for (let i = 0; i < names.length; i += LOAD_BATCH) {
      const batch = names.slice(i, i + LOAD_BATCH);
      const stats = await Promise.all(batch.map((name) => this.loadEntry(name)));
      stats.forEach((st, j) => st && found.push({ name: batch[j], st }));
    }
    found.sort((a, b) => a.st.atimeMs - b.st.atimeMs);
    for (const { name, st } of found) {
      this.insert(name, { size: st.size, mtimeMs: st.mtimeMs });
      this.clock = Math.max(this.clock, st.atimeMs);
    }
    await this.evict();
    this.logger.debug({ entries: this.index.size, bytes: this.bytes }, 'File cache loaded');
  }

  /** Stats one entry found at startup; removes it when its mode was changed. */
  private async loadEntry(name: string): Promise<Stats | undefined> {
    const path = join(this.dir, name);
    const st = await stat(path).catch(() => undefined);
    if (!st?.isFile()) return undefined;
    if ((st.mode & 0o777) === modeOf(name.endsWith('.executable'))) return st;
    // Its mode was changed, so its content may have been too.
    await unlink(path).catch(() => {});
    return undefined;
  }

  async linkInto(key: FileCacheKey, destPath: string): Promise<boolean> {
    const name = entryName(key);
    if (!this.index.has(name)) {
      this.misses++;
      return false;
    }
    const path = join(this.dir, name);
    try {
      await linkOrCopy(path, destPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !(await exists(path))) {
        this.remove(name); // removed behind our back
        this.misses++;
        return false;
      }
      throw failure(err, `Failed to link cached file "${name}" to "${destPath}"`);
    }
    this.hits++;
    await this.touch(name);
    return true;
  }

  async add(key: FileCacheKey, srcPath: string): Promise<void> {
    const name = entryName(key);
    if (this.index.has(name)) return this.touch(name);
    const pending = this.adding.get(name);
    if (pending) return pending;
    const adding = this.addNew(key, name, srcPath).finally(() => this.adding.delete(name));
    this.adding.set(name, adding);
    return adding;
  }

  pin(keys: FileCacheKey[]): () => void {
    const names = keys.map(entryName);
    for (const n of names) this.pins.set(n, (this.pins.get(n) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const n of names) {
        const count = (this.pins.get(n) ?? 1) - 1;
        if (count > 0) this.pins.set(n, count);
        else this.pins.delete(n);
      }
    };
  }

  stats() {
    return {
      entries: this.index.size,
      bytes: this.bytes,
      maxBytes: this.maxBytes,
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
    };
  }

  /**
   * Brings srcPath in under a temporary name, makes it read-only, then
   * renames it into place, so an entry's final name only ever holds a
   * complete file.
   */
  private async addNew(key: FileCacheKey, name: string, srcPath: string): Promise<void> {
    const tmp = join(this.tmpDir, `${name}.${randomBytes(6).toString('hex')}`);
    try {
      const size = (await stat(srcPath)).size;
      if (size !== key.digest.size_bytes)
        throw invalidArgument(
          `File "${srcPath}" has ${size} bytes but its digest says ${key.digest.size_bytes}`,
        );
      if (size > this.maxBytes) {
        this.logger.debug({ name, size }, 'File larger than the whole cache; not added');
        return;
      }
      const st = await this.stage(srcPath, tmp, key.executable);
      await rename(tmp, join(this.dir, name));
      this.insert(name, { size: st.size, mtimeMs: st.mtimeMs });
    } catch (err) {
      throw failure(err, `Failed to add "${srcPath}" to the file cache`);
    } finally {
      await rm(tmp, { force: true });
    }
    await this.touch(name);
    await this.evict();
  }

  /**
   * Hardlinks (or copies) srcPath to tmp with the entry's mode. The source
   * file is read-only afterwards when hardlinked. A file whose inode is shared
   * with others (e.g. another entry) and has the wrong mode is copied, so the
   * chmod cannot change those.
   */
  private async stage(srcPath: string, tmp: string, executable: boolean): Promise<Stats> {
    const mode = modeOf(executable);
    await linkOrCopy(srcPath, tmp);
    let st = await stat(tmp);
    if ((st.mode & 0o777) === mode) return st;
    if (st.nlink > 2) {
      await rm(tmp, { force: true });
      await copyFile(srcPath, tmp);
    }
    await chmod(tmp, mode);
    st = await stat(tmp);
    return st;
  }

  /** Appends name as the most recently used entry. */
  private insert(name: string, entry: Entry): void {
    const old = this.index.get(name);
    if (old) this.bytes -= old.size;
    this.index.delete(name);
    this.index.set(name, entry);
    this.bytes += entry.size;
  }

  private remove(name: string): void {
    const entry = this.index.get(name);
    if (!entry) return;
    this.index.delete(name);
    this.bytes -= entry.size;
  }

  /** Marks name most recently used, in memory and as its access time on disk. */
  private async touch(name: string): Promise<void> {
    const entry = this.index.get(name);
    if (!entry) return;
    this.insert(name, entry);
    this.clock = Math.max(Date.now(), this.clock + 1);
    await utimes(join(this.dir, name), this.clock / 1000, entry.mtimeMs / 1000).catch((err) =>
      this.logger.debug({ name, err: messageOf(err) }, 'Failed to record access time'),
    );
  }

  /**
   * Removes least recently used unpinned entries until the cache fits its
   * limit. Entries are dropped from the index before their files go, so
   * concurrent lookups see a miss rather than a vanishing file.
   */
  private async evict(): Promise<void> {
    const victims: string[] = [];
    for (const name of this.index.keys()) {
      if (this.bytes <= this.maxBytes) break;
      if (this.pins.has(name)) continue;
      this.remove(name);
      this.evictions++;
      victims.push(name);
    }
    await Promise.all(
      victims.map((name) =>
        unlink(join(this.dir, name)).catch((err) =>
          this.logger.warn({ name, err: messageOf(err) }, 'Failed to remove evicted file'),
        ),
      ),
    );
    if (victims.length > 0) this.logger.debug({ evicted: victims.length }, 'File cache evicted');
  }
}

/** Hardlinks src to dest, or copies it (keeping its mode) where hardlinks cannot be made. */
async function linkOrCopy(src: string, dest: string): Promise<void> {
  try {
    await link(src, dest);
  } catch (err) {
    if (!COPY_INSTEAD.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
    await copyAtomically(src, dest);
  }
}

/** Copies to a temporary name beside dest, then renames, so dest never holds part of a file. */
async function copyAtomically(src: string, dest: string): Promise<void> {
  const tmp = `${dest}.copy-${randomBytes(6).toString('hex')}`;
  try {
    await copyFile(src, tmp);
    await chmod(tmp, (await stat(src)).mode & 0o777);
    await rename(tmp, dest);
  } finally {
    await rm(tmp, { force: true });
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Keeps a GrpcError's code; anything else (a filesystem error) is INTERNAL. */
function failure(err: unknown, context: string): GrpcError {
  if (err instanceof GrpcError)
    return new GrpcError(err.code, `${context}: ${err.message}`, err.details);
  return internal(`${context}: ${messageOf(err)}`);
}
