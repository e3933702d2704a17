import type * as grpc from '@grpc/grpc-js';
import type { BlobStore } from '../cas/types.js';
import { digestKey, type BlobDigest } from '../digest.js';
import { Code, GrpcError, internal, invalidArgument, notFound, outOfRange } from '../errors.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';
import {
  grpcPackage,
  type ByteStreamHandlers,
  type QueryWriteStatusRequest__Output,
  type QueryWriteStatusResponse,
  type ReadRequest__Output,
  type ReadResponse,
  type WriteRequest__Output,
  type WriteResponse,
} from '../proto/index.js';
import {
  logFailure,
  sendMessage,
  serverStreamHandler,
  unaryHandler,
  type GrpcService,
} from './grpc-service.js';
import {
  createPartialUploads,
  type PartialUpload,
  type PartialUploads,
} from './partial-uploads.js';
import {
  parseReadResourceName,
  parseWriteResourceName,
  type WriteResourceName,
} from './resource-name.js';

/** Partial uploads nobody has touched for this long are discarded. */
export const UPLOAD_IDLE_TIMEOUT_MS = 60 * 60 * 1000;

/** The ByteStream service plus the partial uploads it holds until closed. */
export interface ByteStreamService extends GrpcService {
  /** Discards every partial upload (and its temporary file). */
  close(): Promise<void>;
}

/**
 * The google.bytestream.ByteStream service over a BlobStore, with REAPI's
 * resource names (see resource-name.ts; the instance name is accepted and
 * ignored, compressed-blobs names are INVALID_ARGUMENT).
 *
 * - Read `{instance}/blobs/{hash}/{size}` streams the blob from disk in
 *   chunks of at most 1 MiB from read_offset, up to read_limit bytes (0 = to
 *   the end). OUT_OF_RANGE for an offset below 0 or past the end,
 *   INVALID_ARGUMENT for a negative limit, NOT_FOUND for an absent blob.
 * - Write `{instance}/uploads/{uuid}/blobs/{hash}/{size}[/...]` appends to a
 *   temporary file; on finish_write the blob is verified (INVALID_ARGUMENT on
 *   a mismatch, nothing stored) and moved into the CAS. A blob already
 *   present ends the Write at once with committed_size = size. Uploads are
 *   resumable: a broken stream leaves its committed bytes, which
 *   QueryWriteStatus reports and a new Write continues from (its first
 *   write_offset must equal committed_size, or 0 to start over).
 * - QueryWriteStatus: complete for a stored blob, committed_size for an
 *   upload in progress, NOT_FOUND otherwise.
 */
export function createByteStreamService(opts: {
  blobStore: BlobStore;
  logger?: Logger;
  uploadIdleTimeoutMs?: number;
}): ByteStreamService {
  const store = opts.blobStore;
  const log = moduleLogger(opts.logger ?? silentLogger, 'bytestream');
  const uploads = createPartialUploads({
    tempPath: () => store.tempPath(),
    idleTimeoutMs: opts.uploadIdleTimeoutMs ?? UPLOAD_IDLE_TIMEOUT_MS,
  });

  const implementation: ByteStreamHandlers = {
    Read: serverStreamHandler(log, 'Read', (req, call) => read(store, req, call)),
    Write: (call, callback) => {
      write(store, uploads, call).then(
        (committed) => callback(null, { committed_size: committed }),
        (err: unknown) => callback(logFailure(log, 'Write', err)),
      );
    },
    QueryWriteStatus: unaryHandler(log, 'QueryWriteStatus', (req) =>
      queryWriteStatus(store, uploads, req),
    ),
  };
  const definition = grpcPackage().google.bytestream.ByteStream.service;
  return { definition, implementation, close: () => uploads.close() };
}

async function read(
  store: BlobStore,
  req: ReadRequest__Output,
  call: grpc.ServerWritableStream<ReadRequest__Output, ReadResponse>,
): Promise<void> {
  // Check the request against the blob
  const { digest } = parseReadResourceName(req.resource_name);
  const offset = req.read_offset;
  if (offset < 0) throw outOfRange(`read_offset ${offset} is negative`);
  if (req.read_limit < 0) throw invalidArgument(`read_limit ${req.read_limit} is negative`);
  if (store.findMissing([digest]).length > 0)
    throw notFound(`Blob "${digestKey(digest)}" is not in the CAS`);
  if (offset > digest.size_bytes)
    throw outOfRange(`read_offset ${offset} is past the end of blob "${digestKey(digest)}"`);
  const end =
    req.read_limit === 0 ? digest.size_bytes : Math.min(digest.size_bytes, offset + req.read_limit);
  if (end === offset) return;

  // Stream the range from disk, one chunk in memory at a time
  const source = store.createReadStream(digest, offset);
  if (source === undefined) throw notFound(`Blob "${digestKey(digest)}" is not in the CAS`);
  let remaining = end - offset;
  try {
    for await (const chunk of source as AsyncIterable<Buffer>) {
      const data = chunk.length > remaining ? chunk.subarray(0, remaining) : chunk;
      await sendMessage(call, { data });
      remaining -= data.length;
      if (remaining === 0) break;
    }
  } finally {
    source.destroy();
  }
  if (remaining > 0) throw internal(`Blob "${digestKey(digest)}" is shorter on disk than its size`);
}

/** Handles one Write stream; resolves to the committed size to report. */
async function write(
  store: BlobStore,
  uploads: PartialUploads,
  call: grpc.ServerReadableStream<WriteRequest__Output, WriteResponse>,
): Promise<number> {
  const owner = Symbol('Write stream');
  let target: { resourceName: string; name: WriteResourceName; key: string } | undefined;
  let upload: PartialUpload | undefined;
  try {
    for await (const req of call as AsyncIterable<WriteRequest__Output>) {
      // The first request names the upload; later ones may only repeat it
      if (target === undefined) target = uploadTarget(req.resource_name);
      else if (req.resource_name !== '' && req.resource_name !== target.resourceName)
        throw invalidArgument(
          `WriteRequest resource_name "${req.resource_name}" differs from the stream's ` +
            `"${target.resourceName}"`,
        );
      const { digest } = target.name;

      // A blob that is already stored ends the upload at once
      if (store.findMissing([digest]).length === 0) {
        if (upload !== undefined) await uploads.discard(target.key);
        return digest.size_bytes;
      }

      upload ??= uploads.claim(target.key, req.write_offset, owner, digest.size_bytes);
      await upload.append(owner, req.write_offset, req.data);
      if (req.finish_write) return await commit(store, upload, owner, digest);
    }
  } catch (err) {
    if (call.cancelled) throw new GrpcError(Code.CANCELLED, 'The client cancelled the Write');
    throw err;
  } finally {
    upload?.release(owner);
  }
  if (target === undefined) throw invalidArgument('Write stream ended without a WriteRequest');
  return (await uploads.committedSize(target.key)) ?? 0;
}

function uploadTarget(resourceName: string) {
  const name = parseWriteResourceName(resourceName);
  const key = `${name.instanceName}/uploads/${name.uploadId}/blobs/${digestKey(name.digest)}`;
  return { resourceName, name, key };
}

/** Verifies the finished upload and moves it into the CAS (nothing stored on a mismatch). */
async function commit(
  store: BlobStore,
  upload: PartialUpload,
  owner: symbol,
  digest: BlobDigest,
): Promise<number> {
  const tempPath = await upload.finish(owner);
  await store.putFile(digest, tempPath);
  return digest.size_bytes;
}

async function queryWriteStatus(
  store: BlobStore,
  uploads: PartialUploads,
  req: QueryWriteStatusRequest__Output,
): Promise<QueryWriteStatusResponse> {
  const { key, name } = uploadTarget(req.resource_name);
  if (store.findMissing([name.digest]).length === 0)
    return { committed_size: name.digest.size_bytes, complete: true };
  const committed = await uploads.committedSize(key);
  if (committed === undefined) throw notFound(`No upload in progress for "${req.resource_name}"`);
  return { committed_size: committed, complete: false };
}
