import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BlobStore } from '../cas/types.js';
import { checkDigest, digestKey, EMPTY_SHA256, sha256Hex, type BlobDigest } from '../digest.js';
import { invalidArgument, wrap } from '../errors.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';

/** Read streams hand out chunks of at most this many bytes. */
export const READ_CHUNK_BYTES = 1024 * 1024;

const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * Opens (creating if needed) the embedded server's CAS under `directory`:
 * blobs live as files at `<directory>/cas/<hash[0:2]>/<hash>`, temporary
 * files at `<directory>/tmp`. At startup the temporary files left by a
 * previous run are removed and the in-memory index (hash → size) is rebuilt
 * by scanning the blob files. Every put is verified (size and SHA-256) before
 * the blob becomes visible, then renamed into place atomically, so readers
 * never see a partial or wrong blob and concurrent puts of one digest are
 * harmless. The empty blob is always present.
 *
 * Limitation: nothing is ever evicted; the data directory grows until the
 * user deletes it.
 */
export async function createBlobStore(opts: {
  directory: string;
  logger?: Logger;
}): Promise<BlobStore> {
  const log = moduleLogger(opts.logger ?? silentLogger, 'blobstore');
  const casDir = join(opts.directory, 'cas');
  const tmpDir = join(opts.directory, 'tmp');
  try {
    await rm(tmpDir, { recursive: true, force: true });
    await mkdir(tmpDir, { recursive: true });
    await mkdir(casDir, { recursive: true });
  } catch (err) {
    throw wrap(err, `Failed to prepare the CAS directory "${opts.directory}"`);
  }
  const index = await scanBlobs(casDir, log);
  const store = new DiskBlobStore(casDir, tmpDir, index, log);
  await store.put({ hash: EMPTY_SHA256, size_bytes: 0 }, new Uint8Array(0));
  log.debug({ blobs: index.size }, 'CAS opened');
  return store;
}

/** Rebuilds the hash → size index from the files under `casDir`. */
async function scanBlobs(casDir: string, log: Logger): Promise<Map<string, number>> {
  const index = new Map<string, number>();
  for (const prefix of await readdir(casDir)) {
    const prefixDir = join(casDir, prefix);
    const names = await readdir(prefixDir).catch(() => [] as string[]);
    for (const name of names) {
      if (!SHA256_HEX.test(name) || name.slice(0, 2) !== prefix) {
        log.warn({ path: join(prefixDir, name) }, 'Ignoring a file that is not a CAS blob');
        continue;
      }
      const info = await stat(join(prefixDir, name));
      if (info.isFile()) index.set(name, info.size);
    }
  }
  return index;
}

class DiskBlobStore implements BlobStore {
  constructor(
    private readonly casDir: string,
    private readonly tmpDir: string,
    private readonly index: Map<string, number>,
    private readonly log: Logger,
  ) {}

  findMissing(digests: BlobDigest[]): BlobDigest[] {
    return digests.filter((d) => !this.has(d));
  }

  async get(digest: BlobDigest): Promise<Buffer | undefined> {
    if (!this.has(digest)) return undefined;
    let data: Buffer;
    try {
      data = await readFile(this.blobPath(digest.hash));
    } catch (err) {
      return this.forgetIfGone(digest, err);
    }
    if (data.length !== digest.size_bytes || sha256Hex(data) !== digest.hash) {
      // The file changed behind our back (disk error, manual edit): drop it
      // so the client re-uploads instead of receiving wrong bytes.
      this.log.error({ digest: digestKey(digest) }, 'CAS blob is corrupt on disk; removing it');
      this.index.delete(digest.hash);
      await unlink(this.blobPath(digest.hash)).catch(() => undefined);
      return undefined;
    }
    return data;
  }

  // Limitation: streamed reads are not re-verified (the blob was verified
  // when written); REAPI clients verify what they read.
  createReadStream(digest: BlobDigest, offset = 0): Readable | undefined {
    if (!this.has(digest)) return undefined;
    return createReadStream(this.blobPath(digest.hash), {
      start: offset,
      highWaterMark: READ_CHUNK_BYTES,
    });
  }

  async put(digest: BlobDigest, data: Uint8Array): Promise<void> {
    checkDigest(digest);
    const actual = { hash: sha256Hex(data), size_bytes: data.length };
    if (actual.hash !== digest.hash || actual.size_bytes !== digest.size_bytes)
      throw mismatch(digest, actual);
    if (this.has(digest)) return;
    const temp = this.tempPath();
    try {
      await writeFile(temp, data);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw wrap(err, `Failed to store blob "${digestKey(digest)}"`);
    }
    await this.commit(digest, temp);
  }

  async putFile(digest: BlobDigest, tempPath: string): Promise<void> {
    try {
      checkDigest(digest);
      const actual = await digestOfFile(tempPath);
      if (actual.hash !== digest.hash || actual.size_bytes !== digest.size_bytes)
        throw mismatch(digest, actual);
    } catch (err) {
      await unlink(tempPath).catch(() => undefined);
      throw err;
    }
    if (this.has(digest)) {
      await unlink(tempPath).catch(() => undefined);
      return;
    }
    await this.commit(digest, tempPath);
  }

  tempPath(): string {
    return join(this.tmpDir, randomUUID());
  }

  private has(d: BlobDigest): boolean {
    return this.index.get(d.hash) === d.size_bytes;
  }

  private blobPath(hash: string): string {
    return join(this.casDir, hash.slice(0, 2), hash);
  }

  /** Renames a verified temporary file into place and indexes it. */
  private async commit(digest: BlobDigest, temp: string): Promise<void> {
    const path = this.blobPath(digest.hash);
    try {
      await mkdir(join(this.casDir, digest.hash.slice(0, 2)), { recursive: true });
      await rename(temp, path);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw wrap(err, `Failed to store blob "${digestKey(digest)}"`);
    }
    this.index.set(digest.hash, digest.size_bytes);
  }

  private forgetIfGone(digest: BlobDigest, err: unknown): undefined {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
      throw wrap(err, `Failed to read blob "${digestKey(digest)}"`);
    this.log.warn({ digest: digestKey(digest) }, 'CAS blob vanished from disk');
    this.index.delete(digest.hash);
    return undefined;
  }
}

function mismatch(expected: BlobDigest, actual: BlobDigest) {
  return invalidArgument(
    `Blob "${digestKey(expected)}" does not match its digest: got "${digestKey(actual)}"`,
  );
}

/** SHA-256 and size of a file, read as a stream. */
async function digestOfFile(path: string): Promise<BlobDigest> {
  const hash = createHash('sha256');
  let size = 0;
  await pipeline(createReadStream(path, { highWaterMark: READ_CHUNK_BYTES }), async (source) => {
    for await (const chunk of source as AsyncIterable<Buffer>) {
      hash.update(chunk);
      size += chunk.length;
    }
  });
  return { hash: hash.digest('hex'), size_bytes: size };
}
