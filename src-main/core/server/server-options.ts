import type { ServerOptions } from '@grpc/grpc-js';

/**
 * Largest BatchUpdateBlobs / BatchReadBlobs request the CAS accepts, in
 * bytes of blob data, and the value advertised in CacheCapabilities. It
 * stays below the 4 MiB message limit that gRPC clients (Bazel included)
 * apply by default, leaving room for the digests and framing around the
 * data, as BuildBuddy does.
 */
export const MAX_BATCH_TOTAL_SIZE_BYTES = 4_000_000;

/**
 * Options for the grpc.Server that hosts the embedded server's services.
 *
 * - Receive limit 64 MiB (grpc-js defaults to 4 MiB): a FindMissingBlobs
 *   request for a large input tree, or a ByteStream chunk from a client
 *   configured with big chunks, may exceed 4 MiB. Batch requests stay
 *   capped by MAX_BATCH_TOTAL_SIZE_BYTES; blobs of any size go over
 *   ByteStream, which holds at most one chunk in memory per stream.
 * - Send limit 64 MiB: our own responses stay far below it (ByteStream
 *   chunks are at most 1 MiB, GetTree pages about 2 MiB, batches 4 MB).
 */
export const GRPC_SERVER_OPTIONS: ServerOptions = {
  'grpc.max_receive_message_length': 64 * 1024 * 1024,
  'grpc.max_send_message_length': 64 * 1024 * 1024,
};
