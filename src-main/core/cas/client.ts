import { open, readFile, rm, type FileHandle } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import type { ContentStore } from './types.js';
import { digestKey, isEmptyDigest, matchesDigest, type BlobDigest } from '../digest.js';
import { Code, codeOf, GrpcError } from '../errors.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';
import {
  grpcPackage,
  type ActionCacheClient,
  type ActionResult__Output,
  type BatchReadBlobsResponse__Output,
  type BatchUpdateBlobsResponse__Output,
  type ByteStreamClient,
  type ContentAddressableStorageClient,
  type Directory__Output,
  type FindMissingBlobsResponse__Output,
  type GetTreeResponse__Output,
} from '../proto/index.js';
import { byteStreamRead, byteStreamWrite, type Transfer } from './bytestream.js';
import { callFailure } from './grpc-errors.js';
import { missingBlobsError } from './missing.js';
import { forEachLimit } from './parallel.js';

/** Blobs up to this size travel in BatchReadBlobs / BatchUpdateBlobs; larger ones over ByteStream. */
export const MAX_BATCH_BLOB_BYTES = 2 * 1024 * 1024;
/** Total blob bytes per batch call by default: BuildBuddy's GRPCMaxSizeBytes. */
export const DEFAULT_MAX_BATCH_BYTES = 4_000_000;
/** Digests per FindMissingBlobs call, well under the message size limit. */
const FIND_MISSING_CHUNK = 10_000;
const DEFAULT_CONCURRENCY = 8;
const DEFAULT_TIMEOUT_MS = 60_000;
const EMPTY = Buffer.alloc(0);

/** The three REAPI client stubs the executor needs, sharing one channel. */
export interface CasClients {
  cas: ContentAddressableStorageClient;
  actionCache: ActionCacheClient;
  byteStream: ByteStreamClient;
  /** Closes the shared channel; calls in flight fail with CANCELLED. */
  close(): void;
}

/**
 * Creates CAS, ActionCache and ByteStream stubs for `target` ("host:port")
 * over one channel. `options` are channel options (plus client options such
 * as interceptors, applied to all three stubs). Receive limits are raised to
 * 64 MiB unless `options` say otherwise, so a full 4 MB batch plus framing
 * always fits. The caller owns the result and closes it when done.
 */
export function createCasClients(
  target: string,
  credentials: grpc.ChannelCredentials,
  options: grpc.ClientOptions = {},
): CasClients {
  const v2 = grpcPackage().build.bazel.remote.execution.v2;
  const { ByteStream } = grpcPackage().google.bytestream;
  const channelOptions = { 'grpc.max_receive_message_length': 64 * 1024 * 1024, ...options };
  const cas = new v2.ContentAddressableStorage(target, credentials, channelOptions);
  const shared = { ...channelOptions, channelOverride: cas.getChannel() };
  return {
    cas,
    actionCache: new v2.ActionCache(target, credentials, shared),
    byteStream: new ByteStream(target, credentials, shared),
    close: () => cas.close(),
  };
}

export interface ContentStoreOptions {
  instanceName: string;
  /** Headers sent on every call (per task: x-buildbuddy-jwt, requestmetadata-bin, …). */
  metadata?: grpc.Metadata;
  /** Total blob bytes per batch call; default 4,000,000. */
  maxBatchBytes?: number;
  /** Calls (batches and streams) in flight at once per operation; default 8. */
  concurrency?: number;
  /** Deadline of unary calls, and how long a stream may sit without data; default 60 s. */
  timeoutMs?: number;
  logger?: Logger;
}

/**
 * The executor's ContentStore over REAPI gRPC stubs. One instance per task
 * (its metadata carries the task's credentials); it holds no state beyond
 * its options, so it can be dropped at any time.
 *
 * - Blobs up to 2 MiB (and up to maxBatchBytes) are read and written in
 *   batches of at most maxBatchBytes; larger ones over ByteStream, files
 *   streamed from disk in 1 MiB chunks.
 * - Every blob read is verified: a size or SHA-256 mismatch is DATA_LOSS
 *   naming the digest (the bytes are corrupt, not merely absent; retrying
 *   the read may succeed, re-uploading will not help).
 * - A missing blob is NOT_FOUND naming "blobs/{hash}/{size}", with a
 *   PreconditionFailure detail listing every missing blob (see missing.ts).
 * - The empty blob is never fetched, uploaded or asked about.
 * - Errors keep the server's gRPC code, with context added
 *   ("Failed to read blob \"h/s\": …").
 */
export function createContentStore(clients: CasClients, opts: ContentStoreOptions): ContentStore {
  const maxBatchBytes = opts.maxBatchBytes ?? DEFAULT_MAX_BATCH_BYTES;
  return new GrpcContentStore(clients, {
    instanceName: opts.instanceName,
    metadata: opts.metadata ?? new grpc.Metadata(),
    maxBatchBytes,
    smallBlobBytes: Math.min(MAX_BATCH_BLOB_BYTES, maxBatchBytes),
    concurrency: opts.concurrency ?? DEFAULT_CONCURRENCY,
    timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    logger: moduleLogger(opts.logger ?? silentLogger, 'cas-client'),
  });
}

interface Settings {
  instanceName: string;
  metadata: grpc.Metadata;
  maxBatchBytes: number;
  smallBlobBytes: number;
  concurrency: number;
  timeoutMs: number;
  logger: Logger;
}

type UnaryStart<Res> = (
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: grpc.requestCallback<Res>,
) => unknown;

class GrpcContentStore implements ContentStore {
  constructor(
    private readonly clients: CasClients,
    private readonly s: Settings,
  ) {}

  async findMissing(digests: BlobDigest[]): Promise<BlobDigest[]> {
    const wanted = unique(digests).filter((d) => !isEmptyDigest(d));
    const chunks = chunk(wanted, FIND_MISSING_CHUNK);
    const missing: BlobDigest[] = [];
    await forEachLimit(chunks, this.s.concurrency, async (blob_digests) => {
      const res = await this.unary<FindMissingBlobsResponse__Output>(
        (md, o, cb) =>
          this.clients.cas.FindMissingBlobs(
            { instance_name: this.s.instanceName, blob_digests },
            md,
            o,
            cb,
          ),
        'Failed to find missing blobs',
      );
      for (const d of res.missing_blob_digests)
        missing.push({ hash: d.hash, size_bytes: Number(d.size_bytes) });
    });
    return missing;
  }

  async read(digest: BlobDigest): Promise<Buffer> {
    const blobs = await this.readMany([digest]);
    return blobs.get(digestKey(digest)) ?? EMPTY;
  }

  async readMany(digests: BlobDigest[]): Promise<Map<string, Buffer>> {
    const blobs = new Map<string, Buffer>();
    const wanted = unique(digests);
    for (const d of wanted.filter(isEmptyDigest)) blobs.set(digestKey(d), EMPTY);
    const { small, large } = this.split(wanted.filter((d) => !isEmptyDigest(d)));
    const jobs = [
      ...this.batches(small).map((batch) => () => this.batchRead(batch, blobs)),
      ...large.map((d) => () => this.streamIntoMap(d, blobs)),
    ];
    const missing: BlobDigest[] = [];
    await forEachLimit(jobs, this.s.concurrency, (job) =>
      job().then((m) => void missing.push(...m)),
    );
    if (missing.length > 0) throw this.notFound(missing);
    return blobs;
  }

  async readToFile(digest: BlobDigest, path: string): Promise<void> {
    const file = await open(path, 'wx');
    try {
      if (digest.size_bytes <= this.s.smallBlobBytes) {
        await file.writeFile(await this.read(digest));
      } else {
        await byteStreamRead(this.transfer(digest), (chunk) => writeAll(file, chunk));
      }
      await file.close();
    } catch (err) {
      await file.close().catch(() => {});
      await rm(path, { force: true });
      throw this.notFoundWithDetails(err, digest);
    }
  }

  async writeMany(
    blobs: { digest: BlobDigest; data?: Uint8Array; path?: string }[],
  ): Promise<void> {
    const byKey = new Map(
      blobs.filter((b) => !isEmptyDigest(b.digest)).map((b) => [digestKey(b.digest), b]),
    );
    const missing = await this.findMissing([...byKey.values()].map((b) => b.digest));
    const toUpload = missing.map((d) => byKey.get(digestKey(d))).filter((b) => b !== undefined);
    const { small, large } = this.split(toUpload.map((b) => b.digest));
    const jobs = [
      ...this.batches(small).map(
        (batch) => () => this.batchUpdate(batch.map((d) => byKey.get(digestKey(d))!)),
      ),
      ...large.map((d) => () => this.streamUpload(byKey.get(digestKey(d))!)),
    ];
    await forEachLimit(jobs, this.s.concurrency, (job) => job());
    this.s.logger.debug({ offered: byKey.size, uploaded: toUpload.length }, 'Uploaded blobs');
  }

  async getTree(root: BlobDigest): Promise<Directory__Output[]> {
    const directories: Directory__Output[] = [];
    let pageToken = '';
    do {
      const call = this.clients.cas.GetTree(
        { instance_name: this.s.instanceName, root_digest: root, page_token: pageToken },
        this.s.metadata.clone(),
        { deadline: Date.now() + this.s.timeoutMs },
      );
      pageToken = '';
      try {
        for await (const res of call as AsyncIterable<GetTreeResponse__Output>) {
          directories.push(...res.directories);
          pageToken = res.next_page_token;
        }
      } catch (err) {
        throw callFailure(err, `Failed to get the tree of directory "${digestKey(root)}"`);
      }
    } while (pageToken !== '');
    return directories;
  }

  async getActionResult(actionDigest: BlobDigest): Promise<ActionResult__Output | undefined> {
    try {
      return await this.unary<ActionResult__Output>(
        (md, o, cb) =>
          this.clients.actionCache.GetActionResult(
            { instance_name: this.s.instanceName, action_digest: actionDigest },
            md,
            o,
            cb,
          ),
        `Failed to get the ActionResult of action "${digestKey(actionDigest)}"`,
      );
    } catch (err) {
      if (codeOf(err) === Code.NOT_FOUND) return undefined;
      throw err;
    }
  }

  /** One BatchReadBlobs call; verified blobs go into `into`, missing digests are returned. */
  private async batchRead(batch: BlobDigest[], into: Map<string, Buffer>): Promise<BlobDigest[]> {
    const res = await this.unary<BatchReadBlobsResponse__Output>(
      (md, o, cb) =>
        this.clients.cas.BatchReadBlobs(
          { instance_name: this.s.instanceName, digests: batch },
          md,
          o,
          cb,
        ),
      `Failed to read ${batch.length} blobs`,
    );
    const byKey = new Map(
      res.responses.map((r) => [digestKey(r.digest ?? { hash: '', size_bytes: 0 }), r]),
    );
    const missing: BlobDigest[] = [];
    for (const digest of batch) {
      const key = digestKey(digest);
      const r = byKey.get(key);
      const code = r?.status?.code ?? Code.UNKNOWN;
      if (r === undefined)
        throw new GrpcError(
          Code.INTERNAL,
          `Failed to read blob "${key}": the server did not answer for it`,
        );
      if (code === Code.NOT_FOUND) missing.push(digest);
      else if (code !== Code.OK)
        throw new GrpcError(code, `Failed to read blob "${key}": ${r.status?.message ?? ''}`);
      else if (!matchesDigest(r.data, digest)) throw corrupted(key);
      else into.set(key, r.data);
    }
    return missing;
  }

  private async streamIntoMap(
    digest: BlobDigest,
    into: Map<string, Buffer>,
  ): Promise<BlobDigest[]> {
    const chunks: Buffer[] = [];
    try {
      await byteStreamRead(this.transfer(digest), (chunk) => void chunks.push(chunk));
    } catch (err) {
      if (codeOf(err) === Code.NOT_FOUND) return [digest];
      throw err;
    }
    into.set(digestKey(digest), Buffer.concat(chunks));
    return [];
  }

  private async batchUpdate(blobs: { digest: BlobDigest; data?: Uint8Array; path?: string }[]) {
    const requests = await Promise.all(
      blobs.map(async (b) => ({ digest: b.digest, data: b.data ?? (await readFile(b.path!)) })),
    );
    const res = await this.unary<BatchUpdateBlobsResponse__Output>(
      (md, o, cb) =>
        this.clients.cas.BatchUpdateBlobs(
          { instance_name: this.s.instanceName, requests },
          md,
          o,
          cb,
        ),
      `Failed to upload ${blobs.length} blobs`,
    );
    for (const r of res.responses) {
      const code = r.status?.code ?? Code.OK;
      if (code !== Code.OK) {
        const key = digestKey(r.digest ?? { hash: '', size_bytes: 0 });
        throw new GrpcError(code, `Failed to upload blob "${key}": ${r.status?.message ?? ''}`);
      }
    }
  }

  private async streamUpload(blob: { digest: BlobDigest; data?: Uint8Array; path?: string }) {
    const source = blob.data !== undefined ? { data: blob.data } : { path: blob.path! };
    await byteStreamWrite(this.transfer(blob.digest), source);
  }

  private transfer(digest: BlobDigest): Transfer {
    return {
      client: this.clients.byteStream,
      instanceName: this.s.instanceName,
      digest,
      metadata: this.s.metadata,
      idleTimeoutMs: this.s.timeoutMs,
    };
  }

  /** Digests small enough for batch calls, and the rest. */
  private split(digests: BlobDigest[]): { small: BlobDigest[]; large: BlobDigest[] } {
    const small = digests.filter((d) => d.size_bytes <= this.s.smallBlobBytes);
    const large = digests.filter((d) => d.size_bytes > this.s.smallBlobBytes);
    return { small, large };
  }

  /** Groups small digests into batches of at most maxBatchBytes of blob data. */
  private batches(digests: BlobDigest[]): BlobDigest[][] {
    const batches: BlobDigest[][] = [];
    let current: BlobDigest[] = [];
    let bytes = 0;
    for (const d of digests) {
      if (current.length > 0 && bytes + d.size_bytes > this.s.maxBatchBytes) {
        batches.push(current);
        current = [];
        bytes = 0;
      }
      current.push(d);
      bytes += d.size_bytes;
    }
    if (current.length > 0) batches.push(current);
    return batches;
  }

  private unary<Res>(start: UnaryStart<Res>, context: string): Promise<Res> {
    return new Promise((resolve, reject) => {
      start(this.s.metadata.clone(), { deadline: Date.now() + this.s.timeoutMs }, (err, res) => {
        if (err || res === undefined)
          reject(callFailure(err ?? new Error('empty response'), context));
        else resolve(res);
      });
    });
  }

  private notFound(missing: BlobDigest[]): GrpcError {
    const blobs = missing.map((digest) => ({ digest, description: 'Blob read by the executor' }));
    const context =
      missing.length === 1
        ? `Failed to read blob "${digestKey(missing[0])}"`
        : 'Failed to read blobs';
    return missingBlobsError(Code.NOT_FOUND, context, blobs);
  }

  /** A NOT_FOUND from ByteStream gets the same PreconditionFailure details as a batch miss. */
  private notFoundWithDetails(err: unknown, digest: BlobDigest): unknown {
    if (codeOf(err) !== Code.NOT_FOUND || (err instanceof GrpcError && err.details.length > 0))
      return err;
    return this.notFound([digest]);
  }
}

function corrupted(key: string): GrpcError {
  return new GrpcError(
    Code.DATA_LOSS,
    `Failed to read blob "${key}": the server sent bytes that do not match the digest`,
  );
}

function unique(digests: BlobDigest[]): BlobDigest[] {
  const byKey = new Map(
    digests.map((d) => [digestKey(d), { hash: d.hash, size_bytes: Number(d.size_bytes) }]),
  );
  return [...byKey.values()];
}

function chunk<T>(items: T[], size: number): T[][] {
  const chunks: T[][] = [];
  for (let i = 0; i < items.length; i += size) chunks.push(items.slice(i, i + size));
  return chunks;
}

async function writeAll(file: FileHandle, data: Buffer): Promise<void> {
  let written = 0;
  while (written < data.length) {
    const { bytesWritten } = await file.write(data, written, data.length - written);
    written += bytesWritten;
  }
}
