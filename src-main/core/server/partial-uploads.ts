import { open, unlink, type FileHandle } from 'node:fs/promises';
import { Code, GrpcError, invalidArgument } from '../errors.js';

/**
 * One ByteStream upload in progress: bytes appended to a temporary file in
 * order. Operations run one at a time, in call order. A Write stream claims
 * the upload with an owner token; a later stream that claims it (a client
 * resuming after a broken stream) fences the earlier one, whose further
 * appends fail with ABORTED.
 */
export interface PartialUpload {
  /** Appends `data` at `offset`, which must equal the committed size; returns the new size. */
  append(owner: symbol, offset: number, data: Uint8Array): Promise<number>;
  /** Ends the upload: closes the file, forgets it, and hands over its temporary file. */
  finish(owner: symbol): Promise<string>;
  /** Lets another stream claim the upload without fencing (the owner's stream ended). */
  release(owner: symbol): void;
}

/**
 * The partial uploads of one ByteStream service, keyed by upload resource
 * name, kept across Write streams so that a client can QueryWriteStatus and
 * resume at committed_size. Uploads left unowned for `idleTimeoutMs` are
 * discarded (checked whenever an upload is claimed).
 */
export interface PartialUploads {
  /**
   * Claims the upload `key` for a Write stream whose first write_offset is
   * `offset`: 0 starts it (over, if it exists), any other offset must equal
   * its committed size. INVALID_ARGUMENT otherwise. `maxSize` bounds how many
   * bytes it may hold.
   */
  claim(key: string, offset: number, owner: symbol, maxSize: number): PartialUpload;
  /** The committed size once queued writes have landed, or undefined for an unknown upload. */
  committedSize(key: string): Promise<number | undefined>;
  /** Drops the upload and deletes its temporary file. */
  discard(key: string): Promise<void>;
  /** Discards every upload. */
  close(): Promise<void>;
}

export function createPartialUploads(opts: {
  tempPath: () => string;
  idleTimeoutMs: number;
}): PartialUploads {
  const uploads = new Map<string, Upload>();
  const forget = (key: string, upload: Upload) => {
    if (uploads.get(key) === upload) uploads.delete(key);
  };

  const discard = async (key: string) => {
    const upload = uploads.get(key);
    if (upload === undefined) return;
    forget(key, upload);
    await upload.discard();
  };

  const sweep = () => {
    const deadline = Date.now() - opts.idleTimeoutMs;
    for (const [key, upload] of uploads)
      if (upload.owner === undefined && upload.lastUsed < deadline) void discard(key);
  };

  return {
    claim(key, offset, owner, maxSize) {
      sweep();
      let upload = uploads.get(key);
      if (upload === undefined) {
        if (offset !== 0)
          throw invalidArgument(
            `Upload "${key}" has no committed data; write_offset ${offset} must be 0`,
          );
        upload = new Upload(opts.tempPath(), maxSize, () => forget(key, upload!));
        uploads.set(key, upload);
      }
      upload.claim(owner, offset);
      return upload;
    },
    async committedSize(key) {
      return uploads.get(key)?.settledSize();
    },
    discard,
    async close() {
      await Promise.all([...uploads.keys()].map(discard));
    },
  };
}

class Upload implements PartialUpload {
  owner: symbol | undefined;
  lastUsed = Date.now();
  private committed = 0;
  private file: Promise<FileHandle>;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly tempPath: string,
    private readonly maxSize: number,
    /** Removes this upload from its registry. */
    private readonly forget: () => void,
  ) {
    this.file = open(tempPath, 'w');
    this.file.catch(() => undefined);
  }

  /**
   * Takes ownership at once (fencing the previous owner); offset 0 starts
   * over. Any other offset must be the committed size, or the claim fails
   * and the current owner keeps the upload.
   */
  claim(owner: symbol, offset: number): void {
    if (offset !== 0 && offset !== this.committed) throw this.offsetError(offset);
    if (offset === 0) this.run(() => this.restart()).catch(() => undefined);
    this.owner = owner;
    this.lastUsed = Date.now();
  }

  append(owner: symbol, offset: number, data: Uint8Array): Promise<number> {
    return this.run(async () => {
      this.checkOwner(owner);
      if (offset !== this.committed) throw this.offsetError(offset);
      if (this.committed + data.length > this.maxSize) {
        this.forget();
        await this.removeFile();
        throw invalidArgument(
          `Upload would hold ${this.committed + data.length} bytes, more than the blob's ` +
            `size ${this.maxSize}; the upload is discarded`,
        );
      }
      await writeAll(await this.file, data, this.committed);
      this.committed += data.length;
      this.lastUsed = Date.now();
      return this.committed;
    });
  }

  finish(owner: symbol): Promise<string> {
    return this.run(async () => {
      this.checkOwner(owner);
      this.forget();
      await (await this.file).close();
      return this.tempPath;
    });
  }

  release(owner: symbol): void {
    if (this.owner === owner) this.owner = undefined;
    this.lastUsed = Date.now();
  }

  settledSize(): Promise<number> {
    return this.run(async () => this.committed);
  }

  discard(): Promise<void> {
    this.owner = undefined;
    return this.run(() => this.removeFile());
  }

  private async removeFile(): Promise<void> {
    this.owner = undefined;
    await (await this.file.catch(() => undefined))?.close().catch(() => undefined);
    await unlink(this.tempPath).catch(() => undefined);
  }

  private async restart(): Promise<void> {
    if (this.committed === 0) return;
    await (await this.file).truncate(0);
    this.committed = 0;
  }

  private run<T>(op: () => Promise<T>): Promise<T> {
    const result = this.queue.then(op);
    this.queue = result.catch(() => undefined);
    return result;
  }

  private checkOwner(owner: symbol): void {
    if (this.owner !== owner)
      throw new GrpcError(Code.ABORTED, 'Another Write stream resumed this upload');
  }

  private offsetError(offset: number): GrpcError {
    return invalidArgument(
      `write_offset ${offset} does not match the committed size ${this.committed}; ` +
        'call QueryWriteStatus and resume from committed_size',
    );
  }
}

async function writeAll(file: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let written = 0;
  while (written < data.length) {
    const { bytesWritten } = await file.write(
      data,
      written,
      data.length - written,
      position + written,
    );
    written += bytesWritten;
  }
}
