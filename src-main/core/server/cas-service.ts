import type * as grpc from '@grpc/grpc-js';
import type { BlobStore } from '../cas/types.js';
import { checkDigest, digestKey, type BlobDigest } from '../digest.js';
import { Code, codeOf, GrpcError, invalidArgument, messageOf } from '../errors.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';
import {
  grpcPackage,
  type BatchReadBlobsRequest__Output,
  type BatchReadBlobsResponse,
  type BatchReadBlobsResponse_Response,
  type BatchUpdateBlobsRequest__Output,
  type BatchUpdateBlobsRequest_Request__Output,
  type BatchUpdateBlobsResponse,
  type BatchUpdateBlobsResponse_Response,
  type ContentAddressableStorageHandlers,
  type Directory__Output,
  type FindMissingBlobsRequest__Output,
  type FindMissingBlobsResponse,
  type GetTreeRequest__Output,
  type GetTreeResponse,
} from '../proto/index.js';
import {
  checkDigestFunction,
  sendMessage,
  serverStreamHandler,
  unaryHandler,
  type GrpcService,
} from './grpc-service.js';
import { MAX_BATCH_TOTAL_SIZE_BYTES } from './server-options.js';
import { walkTree } from './tree-walk.js';

/** GetTree responses carry about this many bytes of Directory messages each. */
const TREE_RESPONSE_BYTES = 2 * 1024 * 1024;

/**
 * The REAPI ContentAddressableStorage service over a BlobStore. Every digest
 * is validated (INVALID_ARGUMENT) and only SHA256 is served. The instance
 * name is accepted and ignored: the embedded server has one namespace.
 *
 * - FindMissingBlobs: the digests the store lacks (never the empty blob).
 * - BatchUpdateBlobs / BatchReadBlobs: at most `maxBatchTotalSizeBytes` of
 *   blob data per call (INVALID_ARGUMENT for the whole call beyond it); each
 *   blob gets its own status: INVALID_ARGUMENT for a digest mismatch (nothing
 *   stored), NOT_FOUND for a missing blob. No batch compressors.
 * - GetTree: breadth-first from the root, each distinct Directory once,
 *   paged by page_size / page_token; NOT_FOUND if the root is missing,
 *   missing subdirectories skipped.
 * - SplitBlob / SpliceBlob: UNIMPLEMENTED (not advertised).
 */
export function createCasService(opts: {
  blobStore: BlobStore;
  logger?: Logger;
  maxBatchTotalSizeBytes?: number;
}): GrpcService {
  const store = opts.blobStore;
  const log = moduleLogger(opts.logger ?? silentLogger, 'cas');
  const maxBatch = opts.maxBatchTotalSizeBytes ?? MAX_BATCH_TOTAL_SIZE_BYTES;
  const unimplemented = (rpc: string) =>
    unaryHandler(log, rpc, async () => {
      throw new GrpcError(Code.UNIMPLEMENTED, `${rpc} is not supported by this server`);
    });

  const implementation: ContentAddressableStorageHandlers = {
    FindMissingBlobs: unaryHandler(log, 'FindMissingBlobs', async (req) =>
      findMissingBlobs(store, req),
    ),
    BatchUpdateBlobs: unaryHandler(log, 'BatchUpdateBlobs', async (req) =>
      batchUpdateBlobs(store, maxBatch, req),
    ),
    BatchReadBlobs: unaryHandler(log, 'BatchReadBlobs', async (req) =>
      batchReadBlobs(store, maxBatch, req),
    ),
    GetTree: serverStreamHandler(log, 'GetTree', async (req, call) => getTree(store, req, call)),
    SplitBlob: unimplemented('SplitBlob'),
    SpliceBlob: unimplemented('SpliceBlob'),
  };
  const definition =
    grpcPackage().build.bazel.remote.execution.v2.ContentAddressableStorage.service;
  return { definition, implementation };
}

async function findMissingBlobs(
  store: BlobStore,
  req: FindMissingBlobsRequest__Output,
): Promise<FindMissingBlobsResponse> {
  checkDigestFunction(req.digest_function);
  const digests = req.blob_digests.map((d) => checkDigest(d));
  return { missing_blob_digests: store.findMissing(digests) };
}

async function batchUpdateBlobs(
  store: BlobStore,
  maxBatch: number,
  req: BatchUpdateBlobsRequest__Output,
): Promise<BatchUpdateBlobsResponse> {
  checkDigestFunction(req.digest_function);
  const total = req.requests.reduce((sum, r) => sum + r.data.length, 0);
  if (total > maxBatch) throw tooLarge('BatchUpdateBlobs', total, maxBatch);
  return { responses: await Promise.all(req.requests.map((r) => updateOne(store, r))) };
}

async function updateOne(
  store: BlobStore,
  r: BatchUpdateBlobsRequest_Request__Output,
): Promise<BatchUpdateBlobsResponse_Response> {
  try {
    const digest = checkDigest(r.digest);
    if (r.compressor !== 'IDENTITY')
      throw invalidArgument(
        `Compressor "${r.compressor}" is not supported; this server advertises no batch ` +
          'compressors, send blobs uncompressed',
      );
    await store.put(digest, r.data);
    return { digest: r.digest, status: { code: Code.OK } };
  } catch (err) {
    return { digest: r.digest, status: { code: codeOf(err), message: messageOf(err) } };
  }
}

async function batchReadBlobs(
  store: BlobStore,
  maxBatch: number,
  req: BatchReadBlobsRequest__Output,
): Promise<BatchReadBlobsResponse> {
  checkDigestFunction(req.digest_function);
  const digests = req.digests.map((d) => checkDigest(d));
  const total = digests.reduce((sum, d) => sum + d.size_bytes, 0);
  if (total > maxBatch) throw tooLarge('BatchReadBlobs', total, maxBatch);
  return { responses: await Promise.all(digests.map((d) => readOne(store, d))) };
}

async function readOne(
  store: BlobStore,
  digest: BlobDigest,
): Promise<BatchReadBlobsResponse_Response> {
  const data = await store.get(digest);
  if (data === undefined)
    return {
      digest,
      status: { code: Code.NOT_FOUND, message: `Blob "${digestKey(digest)}" is not in the CAS` },
    };
  return { digest, data, compressor: 'IDENTITY', status: { code: Code.OK } };
}

function tooLarge(rpc: string, total: number, max: number): GrpcError {
  return invalidArgument(
    `${rpc} request holds ${total} bytes of blobs, more than max_batch_total_size_bytes ` +
      `(${max}); use ByteStream for large blobs`,
  );
}

/**
 * Streams one page of the tree: page_size Directories (all when 0) starting
 * at the page token's position, in responses of about TREE_RESPONSE_BYTES.
 * The last response carries the token for the next page, or none at the end.
 */
async function getTree(
  store: BlobStore,
  req: GetTreeRequest__Output,
  call: grpc.ServerWritableStream<GetTreeRequest__Output, GetTreeResponse>,
): Promise<void> {
  checkDigestFunction(req.digest_function);
  const root = checkDigest(req.root_digest);
  if (req.page_size < 0) throw invalidArgument(`GetTree page_size ${req.page_size} is negative`);
  const start = parsePageToken(req.page_token, root);
  const pageSize = req.page_size === 0 ? Infinity : req.page_size;

  let position = 0;
  let taken = 0;
  let batch: Directory__Output[] = [];
  let batchBytes = 0;
  for await (const entry of walkTree(store, root)) {
    if (position++ < start) continue;
    if (taken === pageSize) {
      await sendMessage(call, {
        directories: batch,
        next_page_token: pageToken(root, position - 1),
      });
      return;
    }
    if (batch.length > 0 && batchBytes + entry.digest.size_bytes > TREE_RESPONSE_BYTES) {
      await sendMessage(call, { directories: batch, next_page_token: '' });
      batch = [];
      batchBytes = 0;
    }
    batch.push(entry.directory);
    batchBytes += entry.digest.size_bytes;
    taken++;
  }
  await sendMessage(call, { directories: batch, next_page_token: '' });
}

/**
 * Page tokens name the position in the breadth-first walk and the root they
 * belong to; the walk is deterministic, so a token stays valid as long as
 * the tree's blobs are present.
 *
 * Limitation: each page re-walks the tree up to its start, so a client
 * paging with a tiny page_size through a huge tree does quadratic work.
 */
function pageToken(root: BlobDigest, position: number): string {
  return Buffer.from(JSON.stringify({ root: digestKey(root), position })).toString('base64url');
}

function parsePageToken(token: string, root: BlobDigest): number {
  if (token === '') return 0;
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
  } catch {
    parsed = undefined;
  }
  const { root: tokenRoot, position } = (parsed ?? {}) as { root?: unknown; position?: unknown };
  if (typeof position !== 'number' || !Number.isSafeInteger(position) || position < 0)
    throw invalidArgument(`GetTree page_token "${token}" was not issued by this server`);
  if (tokenRoot !== digestKey(root))
    throw invalidArgument(`GetTree page_token "${token}" belongs to another root directory`);
  return position;
}
