import { test, describe, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { byteStreamWrite } from '../../../src-main/core/cas/bytestream.js';
import {
  createCasClients,
  createContentStore,
  type CasClients,
} from '../../../src-main/core/cas/client.js';
import { missingDigestsOf } from '../../../src-main/core/cas/missing.js';
import type { ContentStore } from '../../../src-main/core/cas/types.js';
import {
  digestKey,
  digestOf,
  EMPTY_SHA256,
  type BlobDigest,
} from '../../../src-main/core/digest.js';
import { Code, GrpcError } from '../../../src-main/core/errors.js';
import {
  encode,
  grpcPackage,
  type ByteStreamHandlers,
  type ContentAddressableStorageHandlers,
  type Directory,
  type Directory__Output,
} from '../../../src-main/core/proto/index.js';
import { startServer, type EmbeddedServer } from '../../../src-main/core/server/server.js';

const MiB = 1024 * 1024;
let dataDir: string;
let server: EmbeddedServer;
let clients: CasClients;
let store: ContentStore;
let dir: string;

/** Every call the client made: method name, headers and messages sent. */
interface Recorded {
  method: string;
  metadata?: grpc.Metadata;
  messages: Record<string, unknown>[];
}
const recorded: Recorded[] = [];
const recorder: grpc.Interceptor = (options, nextCall) => {
  const entry: Recorded = {
    method: options.method_definition.path.split('/').pop()!,
    messages: [],
  };
  recorded.push(entry);
  return new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      entry.metadata = metadata;
      next(metadata, listener);
    },
    sendMessage(message, next) {
      entry.messages.push(message);
      next(message);
    },
  });
};
const calls = (method: string) => recorded.filter((r) => r.method === method);

before(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'cas-client-server-'));
  dir = await mkdtemp(join(tmpdir(), 'cas-client-test-'));
  server = await startServer({ port: 0, dataDirectory: dataDir, execEnabled: false });
  clients = createCasClients(server.address, grpc.credentials.createInsecure(), {
    interceptors: [recorder],
  });
});
after(async () => {
  clients.close();
  await server.close(0);
  await rm(dataDir, { recursive: true, force: true });
  await rm(dir, { recursive: true, force: true });
});
beforeEach(() => {
  recorded.length = 0;
  const metadata = new grpc.Metadata();
  metadata.set('x-buildbuddy-jwt', 'task-jwt');
  store = createContentStore(clients, { instanceName: 'team/main', metadata });
});

const errorOf = (p: Promise<unknown>) =>
  p.then(
    () => assert.fail('expected an error'),
    (e) => e as GrpcError,
  );
const blob = (size: number) => {
  const data = randomBytes(size);
  return { digest: digestOf(data), data };
};

describe('ContentStore against the embedded server', () => {
  test('small blobs round-trip through batch calls with the task metadata', async () => {
    const a = blob(100);
    const b = blob(200);

    await store.writeMany([a, b]);
    const blobs = await store.readMany([a.digest, b.digest]);

    assert.ok(blobs.get(digestKey(a.digest))?.equals(a.data));
    assert.ok((await store.read(b.digest)).equals(b.data));
    assert.equal(calls('BatchUpdateBlobs').length, 1);
    assert.equal(calls('Write').length, 0);
    assert.ok(recorded.every((r) => r.metadata?.get('x-buildbuddy-jwt')[0] === 'task-jwt'));
  });

  test('a 6 MiB file is uploaded from disk in 1 MiB chunks and downloaded to a file', async () => {
    const big = blob(6 * MiB);
    const src = join(dir, 'big-src');
    await writeFile(src, big.data);

    await store.writeMany([{ digest: big.digest, path: src }]);
    const dest = join(dir, 'big-dest');
    await store.readToFile(big.digest, dest);

    assert.ok((await readFile(dest)).equals(big.data));
    assert.ok((await store.read(big.digest)).equals(big.data));
    const writes = calls('Write')[0].messages;
    assert.ok(writes.every((m) => (m.data as Buffer).length <= MiB));
    assert.equal(
      writes.reduce((n, m) => n + (m.data as Buffer).length, 0),
      6 * MiB,
    );
    assert.equal(writes.at(-1)?.finish_write, true);
    const { hash, size_bytes } = big.digest;
    assert.match(
      writes[0].resource_name as string,
      new RegExp(`^team/main/uploads/[0-9a-f-]{36}/blobs/${hash}/${size_bytes}$`),
    );
    assert.equal(
      calls('Read')[0].messages[0].resource_name,
      `team/main/blobs/${hash}/${size_bytes}`,
    );
  });

  test('writeMany uploads only what FindMissingBlobs reports missing', async () => {
    const blobs = [blob(3 * MiB), blob(10)];

    await store.writeMany(blobs);
    await store.writeMany(blobs);

    assert.equal(calls('FindMissingBlobs').length, 2);
    assert.equal(calls('Write').length, 1);
    assert.equal(calls('BatchUpdateBlobs').length, 1);
  });

  test('batches never exceed maxBatchBytes', async () => {
    const limited = createContentStore(clients, { instanceName: '', maxBatchBytes: 100_000 });
    const blobs = Array.from({ length: 12 }, () => blob(30_000));

    await limited.writeMany(blobs);
    await limited.readMany(blobs.map((b) => b.digest));

    const updates = calls('BatchUpdateBlobs').map((c) =>
      (c.messages[0].requests as { data: Buffer }[]).reduce((n, r) => n + r.data.length, 0),
    );
    const reads = calls('BatchReadBlobs').map((c) =>
      (c.messages[0].digests as BlobDigest[]).reduce((n, d) => n + Number(d.size_bytes), 0),
    );
    assert.equal(updates.length, 4);
    assert.equal(reads.length, 4);
    assert.ok(
      [...updates, ...reads].every((n) => n <= 100_000),
      String([updates, reads]),
    );
  });

  test('the empty blob is never fetched or uploaded', async () => {
    const empty = { hash: EMPTY_SHA256, size_bytes: 0 };

    await store.writeMany([{ digest: empty, data: Buffer.alloc(0) }]);
    const data = await store.read(empty);
    await store.readToFile(empty, join(dir, 'empty'));

    assert.equal(data.length, 0);
    assert.equal((await readFile(join(dir, 'empty'))).length, 0);
    assert.deepEqual(recorded, []);
  });

  test("an upload whose file does not hold the digest's bytes fails", async () => {
    const src = join(dir, 'liar');
    await writeFile(src, randomBytes(3 * MiB));
    const claimed = blob(3 * MiB + 1).digest;

    const err = await errorOf(store.writeMany([{ digest: claimed, path: src }]));

    assert.equal(err.code, Code.INVALID_ARGUMENT);
    assert.match(err.message, new RegExp(`^Failed to upload blob "${digestKey(claimed)}"`));
  });

  test('a Write ends early without error when the server already holds the blob', async () => {
    const big = blob(5 * MiB);
    await store.writeMany([big]);
    recorded.length = 0;

    const transfer = {
      client: clients.byteStream,
      instanceName: '',
      digest: big.digest,
      metadata: new grpc.Metadata(),
      idleTimeoutMs: 5000,
    };
    await byteStreamWrite(transfer, { data: big.data });

    assert.equal(calls('Write').length, 1);
    assert.ok((await store.read(big.digest)).equals(big.data));
  });
});

describe('ContentStore reading bad or missing blobs', () => {
  test('a large blob corrupted on the server is DATA_LOSS and leaves no file behind', async () => {
    const big = blob(3 * MiB);
    await store.writeMany([big]);
    const onDisk = join(dataDir, 'cas', big.digest.hash.slice(0, 2), big.digest.hash);
    const flipped = Buffer.from(big.data);
    flipped[MiB] ^= 0xff;
    await writeFile(onDisk, flipped);
    const dest = join(dir, 'corrupt');

    const err = await errorOf(store.readToFile(big.digest, dest));

    assert.equal(err.code, Code.DATA_LOSS);
    assert.match(err.message, new RegExp(`^Failed to read blob "${digestKey(big.digest)}"`));
    assert.equal(existsSync(dest), false);
  });

  test('missing blobs are NOT_FOUND naming each one, small or large', async () => {
    const small = blob(20).digest;
    const large = blob(3 * MiB).digest;

    const one = await errorOf(store.read(small));
    const many = await errorOf(store.readMany([small, large]));
    const toFile = await errorOf(store.readToFile(large, join(dir, 'missing')));

    assert.equal(one.code, Code.NOT_FOUND);
    assert.match(one.message, new RegExp(`"blobs/${small.hash}/${small.size_bytes}"`));
    assert.equal(many.code, Code.NOT_FOUND);
    assert.deepEqual(
      missingDigestsOf(many).map(digestKey).sort(),
      [small, large].map(digestKey).sort(),
    );
    assert.equal(toFile.code, Code.NOT_FOUND);
    assert.deepEqual(missingDigestsOf(toFile), [large]);
    assert.equal(existsSync(join(dir, 'missing')), false);
  });
});

describe('ContentStore tree and action cache', () => {
  test('getTree returns every Directory below the root', async () => {
    const leaves = ['a', 'b', 'c'].map((n) =>
      directoryBlob({ files: [{ name: n, digest: blob(1).digest }] }),
    );
    const root = directoryBlob({
      directories: leaves.map((l, i) => ({ name: `d${i}`, digest: l.digest })),
    });
    await store.writeMany([root, ...leaves]);

    const directories = await store.getTree(root.digest);

    assert.equal(directories.length, 4);
    assert.deepEqual(
      directories
        .slice(1)
        .map((d) => d.files[0].name)
        .sort(),
      ['a', 'b', 'c'],
    );
  });

  test('getTree of a missing root is NOT_FOUND', async () => {
    const err = await errorOf(
      store.getTree(directoryBlob({ files: [], symlinks: [{ name: 'x', target: 'y' }] }).digest),
    );
    assert.equal(err.code, Code.NOT_FOUND);
    assert.match(err.message, /^Failed to get the tree of directory/);
  });

  test('getActionResult returns the cached result, or undefined when there is none', async () => {
    const action = blob(30).digest;
    await new Promise<void>((resolve, reject) =>
      clients.actionCache.UpdateActionResult(
        { action_digest: action, action_result: { exit_code: 3 } },
        (err) => (err ? reject(err) : resolve()),
      ),
    );

    const hit = await store.getActionResult(action);
    const miss = await store.getActionResult(blob(30).digest);

    assert.equal(hit?.exit_code, 3);
    assert.equal(miss, undefined);
  });

  test('a server that is gone is UNAVAILABLE with context', async () => {
    const dead = createCasClients('127.0.0.1:1', grpc.credentials.createInsecure());
    const deadStore = createContentStore(dead, { instanceName: '', timeoutMs: 2000 });
    try {
      const err = await errorOf(deadStore.findMissing([blob(1).digest]));
      assert.equal(err.code, Code.UNAVAILABLE);
      assert.match(err.message, /^Failed to find missing blobs: /);
    } finally {
      dead.close();
    }
  });
});

function directoryBlob(d: Directory) {
  const data = encode('build.bazel.remote.execution.v2.Directory', d);
  return { digest: digestOf(data), data };
}

/**
 * A scripted server for misbehaviour the embedded server never shows: batch
 * reads answered with corrupted bytes, ByteStream reads that never send,
 * and GetTree answered two Directories per page.
 */
async function startScriptedServer(directories: Directory__Output[]) {
  const server = new grpc.Server();
  const cas: Pick<ContentAddressableStorageHandlers, 'BatchReadBlobs' | 'GetTree'> = {
    BatchReadBlobs(call, cb) {
      const responses = call.request.digests.map((digest) => ({
        digest,
        data: Buffer.alloc(Number(digest.size_bytes), 1),
        status: { code: 0 },
      }));
      cb(null, { responses });
    },
    GetTree(call) {
      const start = Number(call.request.page_token || 0);
      const end = Math.min(directories.length, start + 2);
      const next_page_token = end < directories.length ? String(end) : '';
      call.write({ directories: directories.slice(start, end), next_page_token });
      call.end();
    },
  };
  const byteStream: Pick<ByteStreamHandlers, 'Read'> = { Read: () => {} };
  const pkg = grpcPackage();
  server.addService(
    pkg.build.bazel.remote.execution.v2.ContentAddressableStorage.service,
    cas as grpc.UntypedServiceImplementation,
  );
  server.addService(
    pkg.google.bytestream.ByteStream.service,
    byteStream as grpc.UntypedServiceImplementation,
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  const scriptedClients = createCasClients(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  return {
    store: createContentStore(scriptedClients, { instanceName: '', timeoutMs: 300 }),
    close: () => {
      scriptedClients.close();
      server.forceShutdown();
    },
  };
}

describe('ContentStore against a misbehaving server', () => {
  const leaf = (name: string): Directory__Output => ({
    files: [{ name, digest: blob(1).digest, is_executable: false, node_properties: null }],
    directories: [],
    symlinks: [],
    node_properties: null,
  });
  const tree = ['a', 'b', 'c', 'd', 'e'].map(leaf);
  let scripted: Awaited<ReturnType<typeof startScriptedServer>>;
  before(async () => {
    scripted = await startScriptedServer(tree);
  });
  after(() => scripted.close());

  test('a small blob answered with other bytes is DATA_LOSS naming the digest', async () => {
    const wanted = blob(64).digest;

    const err = await errorOf(scripted.store.read(wanted));

    assert.equal(err.code, Code.DATA_LOSS);
    assert.match(err.message, new RegExp(`^Failed to read blob "${digestKey(wanted)}"`));
  });

  test('a ByteStream read that stalls is DEADLINE_EXCEEDED after the idle timeout', async () => {
    const started = Date.now();

    const err = await errorOf(scripted.store.read(blob(3 * MiB).digest));

    assert.equal(err.code, Code.DEADLINE_EXCEEDED);
    assert.match(err.message, /No data moved for 0.3 s/);
    assert.ok(Date.now() - started < 3000);
  });

  test('getTree follows page tokens to the last page', async () => {
    const directories = await scripted.store.getTree(blob(10).digest);

    assert.deepEqual(
      directories.map((d) => d.files[0].name),
      ['a', 'b', 'c', 'd', 'e'],
    );
  });
});
