// A real gRPC server on loopback serving the embedded server's storage
// services (CAS, Action Cache, ByteStream, Capabilities) over a temporary
// data directory, with real clients built from grpcPackage().
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ActionCacheStore, BlobStore } from '../../../src-main/core/cas/types.js';
import { type Code } from '../../../src-main/core/errors.js';
import {
  grpcPackage,
  type ActionCacheClient,
  type ByteStreamClient,
  type CapabilitiesClient,
  type ContentAddressableStorageClient,
} from '../../../src-main/core/proto/index.js';
import { createActionCacheService } from '../../../src-main/core/server/ac-service.js';
import { createActionCacheStore } from '../../../src-main/core/server/action-cache.js';
import { createBlobStore } from '../../../src-main/core/server/blob-store.js';
import { createByteStreamService } from '../../../src-main/core/server/bytestream-service.js';
import { createCapabilitiesService } from '../../../src-main/core/server/capabilities-service.js';
import { createCasService } from '../../../src-main/core/server/cas-service.js';
import { GRPC_SERVER_OPTIONS } from '../../../src-main/core/server/server-options.js';

export interface StorageHarness {
  directory: string;
  blobStore: BlobStore;
  actionCache: ActionCacheStore;
  cas: ContentAddressableStorageClient;
  ac: ActionCacheClient;
  bytestream: ByteStreamClient;
  capabilities: CapabilitiesClient;
  /** Stops server and clients; removes the data directory unless `keepDirectory`. */
  close(opts?: { keepDirectory?: boolean }): Promise<void>;
}

export async function startStorageServer(
  opts: { directory?: string; maxBatchTotalSizeBytes?: number; execEnabled?: boolean } = {},
): Promise<StorageHarness> {
  const directory = opts.directory ?? (await mkdtemp(join(tmpdir(), 'idlebuild-storage-')));
  const blobStore = await createBlobStore({ directory });
  const actionCache = await createActionCacheStore({ directory });
  const bytestreamService = createByteStreamService({ blobStore });
  const services = [
    createCasService({ blobStore, maxBatchTotalSizeBytes: opts.maxBatchTotalSizeBytes }),
    createActionCacheService({ actionCache, blobStore }),
    bytestreamService,
    createCapabilitiesService({ execEnabled: opts.execEnabled ?? true }),
  ];
  const server = new grpc.Server(GRPC_SERVER_OPTIONS);
  for (const s of services) server.addService(s.definition, s.implementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );

  const address = `127.0.0.1:${port}`;
  const creds = grpc.credentials.createInsecure();
  const pkg = grpcPackage();
  const v2 = pkg.build.bazel.remote.execution.v2;
  const cas = new v2.ContentAddressableStorage(address, creds);
  const ac = new v2.ActionCache(address, creds);
  const capabilities = new v2.Capabilities(address, creds);
  const bytestream = new pkg.google.bytestream.ByteStream(address, creds);
  return {
    directory,
    blobStore,
    actionCache,
    cas,
    ac,
    bytestream,
    capabilities,
    async close({ keepDirectory = false } = {}) {
      for (const c of [cas, ac, capabilities, bytestream]) c.close();
      server.forceShutdown();
      await bytestreamService.close();
      if (!keepDirectory) await rm(directory, { recursive: true, force: true });
    },
  };
}

/** Promise form of a unary call: `unary<Res>((cb) => client.Method(req, cb))`. */
export function unary<Res>(
  start: (cb: (err: grpc.ServiceError | null, res?: Res) => void) => unknown,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((err, res) => (err ? reject(err) : resolve(res as Res)));
  });
}

/** Every message of a server stream, or its error. */
export function collect<T>(stream: grpc.ClientReadableStream<T>): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const items: T[] = [];
    stream.on('data', (item: T) => items.push(item));
    stream.on('error', reject);
    stream.on('end', () => resolve(items));
  });
}

/** Asserts that `promise` fails with gRPC status `code` and a message matching `pattern`. */
export async function rejectsWith(promise: Promise<unknown>, code: Code, pattern?: RegExp) {
  await assert.rejects(promise, (err: grpc.ServiceError) => {
    assert.equal(err.code, code, `expected code ${code}, got ${err.code}: ${err.details}`);
    if (pattern) assert.match(err.details, pattern);
    return true;
  });
}
