// A small real gRPC server on loopback for the CAS client's tests: REAPI CAS
// (FindMissingBlobs, BatchReadBlobs, BatchUpdateBlobs, GetTree with paging),
// ByteStream Read/Write and ActionCache GetActionResult over a Map. It can
// serve corrupted bytes on purpose and records what clients sent.
import * as grpc from '@grpc/grpc-js';
import {
  digestKey,
  isEmptyDigest,
  matchesDigest,
  type BlobDigest,
} from '../../../src-main/core/digest.js';
import {
  decode,
  grpcPackage,
  type ActionResult,
  type Directory__Output,
  type WriteRequest__Output,
} from '../../../src-main/core/proto/index.js';

export interface TestCasServer {
  target: string;
  blobs: Map<string, Buffer>;
  /** Digest keys served with one byte flipped. */
  corrupt: Set<string>;
  actionResults: Map<string, ActionResult>;
  calls: Record<string, number>;
  /** Total blob bytes of each BatchUpdateBlobs / BatchReadBlobs call. */
  batchBytes: number[];
  writeChunkSizes: number[];
  resourceNames: string[];
  /** x-buildbuddy-jwt header of every call. */
  jwts: string[];
  /** Directories per GetTree page. */
  treePageSize: number;
  close(): Promise<void>;
}

const CHUNK = 1024 * 1024;

export async function startTestCasServer(): Promise<TestCasServer> {
  const server = new grpc.Server();
  const s: TestCasServer = {
    target: '',
    blobs: new Map(),
    corrupt: new Set(),
    actionResults: new Map(),
    calls: {},
    batchBytes: [],
    writeChunkSizes: [],
    resourceNames: [],
    jwts: [],
    treePageSize: 2,
    close: () => new Promise((resolve) => server.tryShutdown(() => resolve())),
  };
  const record = (rpc: string, metadata: grpc.Metadata) => {
    s.calls[rpc] = (s.calls[rpc] ?? 0) + 1;
    s.jwts.push(String(metadata.get('x-buildbuddy-jwt')[0] ?? ''));
  };
  const has = (d: BlobDigest) => isEmptyDigest(d) || s.blobs.has(digestKey(d));
  const serve = (d: BlobDigest) => {
    const data = Buffer.from(s.blobs.get(digestKey(d)) ?? Buffer.alloc(0));
    if (s.corrupt.has(digestKey(d))) data[0] ^= 0xff;
    return data;
  };
  const norm = (d: { hash: string; size_bytes: number } | null) => ({
    hash: d?.hash ?? '',
    size_bytes: Number(d?.size_bytes ?? 0),
  });
  const pkg = grpcPackage();
  const v2 = pkg.build.bazel.remote.execution.v2;

  server.addService(v2.ContentAddressableStorage.service, {
    FindMissingBlobs(call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) {
      record('FindMissingBlobs', call.metadata);
      cb(null, { missing_blob_digests: call.request.blob_digests.map(norm).filter((d: BlobDigest) => !has(d)) });
    },
    BatchReadBlobs(call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) {
      record('BatchReadBlobs', call.metadata);
      const digests: BlobDigest[] = call.request.digests.map(norm);
      s.batchBytes.push(digests.reduce((n, d) => n + d.size_bytes, 0));
      const responses = digests.map((digest) =>
        has(digest)
          ? { digest, data: serve(digest), status: { code: 0 } }
          : { digest, status: { code: grpc.status.NOT_FOUND, message: 'not found' } },
      );
      cb(null, { responses });
    },
    BatchUpdateBlobs(call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) {
      record('BatchUpdateBlobs', call.metadata);
      const requests: { digest: BlobDigest; data: Buffer }[] = call.request.requests;
      s.batchBytes.push(requests.reduce((n, r) => n + r.data.length, 0));
      const responses = requests.map((r) => {
        const digest = norm(r.digest);
        if (!matchesDigest(r.data, digest))
          return { digest, status: { code: grpc.status.INVALID_ARGUMENT, message: 'mismatch' } };
        s.blobs.set(digestKey(digest), r.data);
        return { digest, status: { code: 0 } };
      });
      cb(null, { responses });
    },
    GetTree(call: grpc.ServerWritableStream<any, any>) {
      record('GetTree', call.metadata);
      const root = norm(call.request.root_digest);
      if (!s.blobs.has(digestKey(root))) {
        call.emit('error', { code: grpc.status.NOT_FOUND, details: `Root "${digestKey(root)}" not found` });
        return;
      }
      const all = walk(s.blobs, root);
      const start = Number(call.request.page_token || 0);
      const end = Math.min(all.length, start + s.treePageSize);
      call.write({ directories: all.slice(start, end), next_page_token: end < all.length ? String(end) : '' });
      call.end();
    },
  });

  server.addService(pkg.google.bytestream.ByteStream.service, {
    Read(call: grpc.ServerWritableStream<any, any>) {
      record('Read', call.metadata);
      s.resourceNames.push(call.request.resource_name);
      const digest = parseDigest(call.request.resource_name);
      if (!has(digest)) {
        call.emit('error', { code: grpc.status.NOT_FOUND, details: 'blob not found' });
        return;
      }
      const data = serve(digest);
      for (let i = 0; i < data.length; i += CHUNK) call.write({ data: data.subarray(i, i + CHUNK) });
      call.end();
    },
    Write(call: grpc.ServerReadableStream<WriteRequest__Output, any>, cb: grpc.sendUnaryData<any>) {
      record('Write', call.metadata);
      const chunks: Buffer[] = [];
      let digest: BlobDigest | undefined;
      let answered = false;
      const answer = (err: Partial<grpc.ServiceError> | null, res?: object) => {
        if (answered) return;
        answered = true;
        cb(err, res);
      };
      call.on('data', (req: WriteRequest__Output) => {
        if (req.resource_name) {
          s.resourceNames.push(req.resource_name);
          digest = parseDigest(req.resource_name);
          if (has(digest)) return answer(null, { committed_size: digest.size_bytes });
        }
        s.writeChunkSizes.push(req.data.length);
        chunks.push(req.data);
        if (req.finish_write && digest) {
          const data = Buffer.concat(chunks);
          if (!matchesDigest(data, digest))
            return answer({ code: grpc.status.INVALID_ARGUMENT, details: 'digest mismatch' });
          s.blobs.set(digestKey(digest), data);
          answer(null, { committed_size: data.length });
        }
      });
      call.on('end', () => answer({ code: grpc.status.INVALID_ARGUMENT, details: 'no finish_write' }));
      call.on('error', () => {});
    },
  });

  server.addService(v2.ActionCache.service, {
    GetActionResult(call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) {
      record('GetActionResult', call.metadata);
      const result = s.actionResults.get(digestKey(norm(call.request.action_digest)));
      if (result) cb(null, result);
      else cb({ code: grpc.status.NOT_FOUND, details: 'no result' });
    },
  });

  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  s.target = `127.0.0.1:${port}`;
  return s;
}

/** The digest at the end of a ByteStream resource name (".../blobs/{hash}/{size}"). */
function parseDigest(resourceName: string): BlobDigest {
  const parts = resourceName.split('/');
  return { hash: parts[parts.length - 2], size_bytes: Number(parts[parts.length - 1]) };
}

function walk(blobs: Map<string, Buffer>, root: BlobDigest): Directory__Output[] {
  const out: Directory__Output[] = [];
  const queue = [root];
  const seen = new Set<string>();
  while (queue.length > 0) {
    const d = queue.shift()!;
    const bytes = blobs.get(digestKey(d));
    if (seen.has(digestKey(d)) || !bytes) continue;
    seen.add(digestKey(d));
    const dir = decode('build.bazel.remote.execution.v2.Directory', bytes);
    out.push(dir);
    for (const child of dir.directories) if (child.digest) queue.push(child.digest);
  }
  return out;
}
