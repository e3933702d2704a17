import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { digestOf } from '../../../src-main/core/digest.js';
import { grpcPackage } from '../../../src-main/core/proto/index.js';
import { startTestServer, TestClient, TestExecutor } from './scheduler-harness.js';

const v2 = () => grpcPackage().build.bazel.remote.execution.v2;

function capabilities(address: string) {
  const client = new (v2().Capabilities)(address, grpc.credentials.createInsecure());
  return new Promise<{ exec_enabled: boolean }>((resolve, reject) =>
    client.GetCapabilities({}, (err, res) => {
      client.close();
      if (err) reject(err);
      else resolve({ exec_enabled: res!.execution_capabilities!.exec_enabled });
    }),
  );
}

describe('Embedded server', () => {
  test('listens on an ephemeral loopback port and serves every service', async () => {
    const ts = await startTestServer();
    try {
      assert.match(ts.address, /^127\.0\.0\.1:\d+$/);
      assert.equal(ts.address, `127.0.0.1:${ts.server.port}`);
      assert.equal((await capabilities(ts.address)).exec_enabled, true);

      // CAS and ByteStream share one store.
      const client = new TestClient(ts.address);
      const blob = Buffer.from('served by the CAS');
      await client.upload([blob]);
      const bytestream = new (grpcPackage().google.bytestream.ByteStream)(
        ts.address,
        grpc.credentials.createInsecure(),
      );
      const d = digestOf(blob);
      const chunks: Buffer[] = [];
      await new Promise<void>((resolve, reject) => {
        const call = bytestream.Read({ resource_name: `blobs/${d.hash}/${d.size_bytes}` });
        call.on('data', (r: { data: Buffer }) => chunks.push(r.data));
        call.on('end', resolve);
        call.on('error', reject);
      });
      assert.deepEqual(Buffer.concat(chunks), blob);
      bytestream.close();
      client.close();
    } finally {
      await ts.stop();
    }
  });

  test("accepts messages larger than gRPC's 4 MiB default", async () => {
    const ts = await startTestServer();
    const cas = new (v2().ContentAddressableStorage)(
      ts.address,
      grpc.credentials.createInsecure(),
      {
        'grpc.max_receive_message_length': -1,
      },
    );
    try {
      // About 4.4 MB of digests in one FindMissingBlobs request.
      const digests = Array.from({ length: 60_000 }, () => digestOf(randomBytes(8)));
      const missing = await new Promise<number>((resolve, reject) =>
        cas.FindMissingBlobs({ blob_digests: digests }, (err, res) =>
          err ? reject(err) : resolve(res!.missing_blob_digests.length),
        ),
      );
      assert.equal(missing, digests.length);
    } finally {
      cas.close();
      await ts.stop();
    }
  });

  test('a port in use is a clear error naming the address and --port', async () => {
    const first = await startTestServer();
    try {
      await assert.rejects(startTestServer({ port: first.server.port }), (err: Error) => {
        assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${first.server.port}`));
        assert.match(err.message, /--port/);
        return true;
      });
    } finally {
      await first.stop();
    }
  });

  test('with execution disabled it is a cache-only server', async () => {
    const ts = await startTestServer({ execEnabled: false });
    const client = new TestClient(ts.address);
    const executor = new TestExecutor(ts.address);
    try {
      assert.equal((await capabilities(ts.address)).exec_enabled, false);
      const { actionDigest } = await client.uploadAction();
      const err = await client.execute(actionDigest).closed();
      assert.equal(err?.code, grpc.status.UNIMPLEMENTED);
      assert.equal((await executor.reservations.closed())?.code, grpc.status.UNIMPLEMENTED);
    } finally {
      client.close();
      executor.close();
      await ts.stop();
    }
  });

  test('close() ends open executor streams instead of waiting for them', async () => {
    const ts = await startTestServer();
    const executor = new TestExecutor(ts.address);
    await executor.ready();
    const started = Date.now();
    await ts.server.close(100);
    assert.ok(Date.now() - started < 2000);
    assert.notEqual(await executor.reservations.closed(), undefined);
    executor.close();
    await ts.stop();
  });
});
