// ByteStream transfers of single blobs, for the CAS client: reads verified
// against their digest as they stream, writes in 1 MiB chunks from memory or
// from a file, and an idle timeout on both so a stalled server cannot hang a
// task forever.
import { createHash, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream } from 'node:fs';
import type * as grpc from '@grpc/grpc-js';
import { digestKey, type BlobDigest } from '../digest.js';
import { Code, GrpcError, invalidArgument } from '../errors.js';
import type { ByteStreamClient, WriteRequest, WriteResponse__Output } from '../proto/index.js';
import { callFailure } from './grpc-errors.js';

/** Size of the data in each WriteRequest, and of each read from a file. */
export const BYTESTREAM_CHUNK_BYTES = 1024 * 1024;

/** One ByteStream transfer: which blob, where, with which headers. */
export interface Transfer {
  client: ByteStreamClient;
  instanceName: string;
  digest: BlobDigest;
  metadata: grpc.Metadata;
  /** Cancel the call when no data moves for this long. */
  idleTimeoutMs: number;
}

/** "{instance}/blobs/{hash}/{size}", the instance segment left out when empty. */
export function readResourceName(instanceName: string, digest: BlobDigest): string {
  return withInstance(instanceName, `blobs/${digest.hash}/${digest.size_bytes}`);
}

/** "{instance}/uploads/{uuid}/blobs/{hash}/{size}", with a fresh v4 uuid. */
export function writeResourceName(instanceName: string, digest: BlobDigest): string {
  return withInstance(
    instanceName,
    `uploads/${randomUUID()}/blobs/${digest.hash}/${digest.size_bytes}`,
  );
}

function withInstance(instanceName: string, rest: string): string {
  return instanceName === '' ? rest : `${instanceName}/${rest}`;
}

/**
 * Streams one blob through `sink` (awaited per chunk, so a slow sink slows
 * the stream) and resolves once the bytes are verified: DATA_LOSS naming the
 * digest when size or SHA-256 differ; the server's code (NOT_FOUND for a
 * missing blob) otherwise.
 */
export async function byteStreamRead(
  t: Transfer,
  sink: (chunk: Buffer) => Promise<void> | void,
): Promise<void> {
  const key = digestKey(t.digest);
  const call = t.client.Read(
    { resource_name: readResourceName(t.instanceName, t.digest), read_offset: 0, read_limit: 0 },
    t.metadata.clone(),
  );
  const idle = idleTimer(t.idleTimeoutMs, () => call.cancel());
  const hash = createHash('sha256');
  let received = 0;
  try {
    for await (const response of call as AsyncIterable<{ data: Buffer }>) {
      idle.reset();
      received += response.data.length;
      if (received > t.digest.size_bytes)
        throw corrupted(key, `more than ${t.digest.size_bytes} bytes`);
      hash.update(response.data);
      await sink(response.data);
    }
  } catch (err) {
    call.cancel();
    if (err instanceof GrpcError) throw err;
    throw callFailure(idle.fired ? stalled(t.idleTimeoutMs) : err, `Failed to read blob "${key}"`);
  } finally {
    idle.stop();
  }
  if (received !== t.digest.size_bytes) throw corrupted(key, `${received} bytes`);
  if (hash.digest('hex') !== t.digest.hash) throw corrupted(key, 'bytes with another SHA-256');
}

/**
 * Uploads one blob from memory or from a file (read in 1 MiB chunks, never
 * whole). Resolves when the server has committed the blob, including when it
 * ends the stream early because it already holds it. The source must hold
 * exactly digest.size_bytes bytes (INVALID_ARGUMENT otherwise).
 */
export async function byteStreamWrite(
  t: Transfer,
  source: { data: Uint8Array } | { path: string },
): Promise<void> {
  const key = digestKey(t.digest);
  let response: WriteResponse__Output | undefined;
  let failure: unknown;
  let settle: () => void = () => {};
  const finished = new Promise<void>((resolve) => (settle = resolve));
  const call = t.client.Write(t.metadata.clone(), (err, res) => {
    if (err) failure = err;
    else response = res;
    settle();
  });
  call.on('error', () => {}); // reported through the callback
  const idle = idleTimer(t.idleTimeoutMs, () => call.cancel());
  try {
    const answered = () => response !== undefined || failure !== undefined;
    const read = await sendChunks(call, t, chunksOf(source), answered, idle);
    if (!answered() && read !== t.digest.size_bytes)
      throw invalidArgument(`The source does not hold exactly ${t.digest.size_bytes} bytes`);
    call.end();
    await finished;
  } catch (err) {
    call.cancel();
    failure ??= err;
  } finally {
    idle.stop();
  }
  if (failure !== undefined)
    throw callFailure(
      idle.fired ? stalled(t.idleTimeoutMs) : failure,
      `Failed to upload blob "${key}"`,
    );
  const committed = Number(response?.committed_size ?? 0);
  if (committed !== t.digest.size_bytes && committed !== -1)
    throw new GrpcError(
      Code.DATA_LOSS,
      `Failed to upload blob "${key}": the server committed ${committed} bytes`,
    );
}

/**
 * Sends the source as WriteRequests, holding one chunk back so the last one
 * carries finish_write. Stops early once `done()` (the server answered) or
 * once the source proves longer than the digest says. Returns the number of
 * bytes read from the source.
 */
async function sendChunks(
  call: grpc.ClientWritableStream<WriteRequest>,
  t: Transfer,
  chunks: AsyncIterable<Buffer>,
  done: () => boolean,
  idle: IdleTimer,
): Promise<number> {
  const resourceName = writeResourceName(t.instanceName, t.digest);
  let offset = 0;
  let read = 0;
  let pending: Buffer | undefined;
  const send = async (data: Buffer, finish: boolean) => {
    const request: WriteRequest = { write_offset: offset, data, finish_write: finish };
    if (offset === 0) request.resource_name = resourceName;
    offset += data.length;
    if (!call.write(request)) await drained(call, done);
    idle.reset();
  };
  for await (const chunk of chunks) {
    read += chunk.length;
    if (done() || read > t.digest.size_bytes) return read;
    if (pending) await send(pending, false);
    pending = chunk;
  }
  if (pending && !done() && read === t.digest.size_bytes) await send(pending, true);
  return read;
}

async function drained(call: grpc.ClientWritableStream<WriteRequest>, done: () => boolean) {
  while (!done() && call.writableNeedDrain) {
    await Promise.race([once(call, 'drain'), new Promise((r) => setTimeout(r, 100))]);
  }
}

async function* chunksOf(source: { data: Uint8Array } | { path: string }): AsyncIterable<Buffer> {
  if ('data' in source) {
    const data = Buffer.from(source.data.buffer, source.data.byteOffset, source.data.byteLength);
    for (let i = 0; i < data.length; i += BYTESTREAM_CHUNK_BYTES)
      yield data.subarray(i, i + BYTESTREAM_CHUNK_BYTES);
    return;
  }
  yield* createReadStream(source.path, {
    highWaterMark: BYTESTREAM_CHUNK_BYTES,
  }) as AsyncIterable<Buffer>;
}

function corrupted(key: string, what: string): GrpcError {
  return new GrpcError(
    Code.DATA_LOSS,
    `Failed to read blob "${key}": the server sent ${what}, which does not match the digest`,
  );
}

function stalled(ms: number): GrpcError {
  return new GrpcError(Code.DEADLINE_EXCEEDED, `No data moved for ${ms / 1000} s`);
}

interface IdleTimer {
  readonly fired: boolean;
  reset(): void;
  stop(): void;
}

function idleTimer(ms: number, onIdle: () => void): IdleTimer {
  let handle: NodeJS.Timeout | undefined;
  const timer = {
    fired: false,
    reset() {
      if (handle) clearTimeout(handle);
      handle = setTimeout(() => {
        timer.fired = true;
        onIdle();
      }, ms);
      handle.unref?.();
    },
    stop() {
      if (handle) clearTimeout(handle);
    },
  };
  timer.reset();
  return timer;
}
