import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  decode,
  encode,
  ExecutionStage,
  grpcPackage,
  packAny,
  unpackAny,
  type Directory,
  type ExecutionTask,
} from '../../src-main/core/proto/index.js';

const REAPI = 'build.bazel.remote.execution.v2';

const directory: Directory = {
  symlinks: [{ name: 'l', target: 'a' }],
  directories: [{ name: 'd', digest: { hash: 'cd', size_bytes: 0 } }],
  files: [{ name: 'a', digest: { hash: 'ab', size_bytes: 3 }, is_executable: true }],
};

const task: ExecutionTask = {
  execute_request: {
    instance_name: 'ci',
    action_digest: { hash: 'f'.repeat(64), size_bytes: 142 },
    digest_function: 'SHA256',
    execution_policy: { priority: -1 },
  },
  jwt: 'jwt-token',
  invocation_id: 'inv-1',
  action: {
    command_digest: { hash: 'c'.repeat(64), size_bytes: 88 },
    timeout: { seconds: 900, nanos: 0 },
    do_not_cache: true,
  },
  command: {
    arguments: ['/bin/sh', '-c', 'echo hi > out.txt'],
    environment_variables: [{ name: 'PATH', value: '/usr/bin' }],
    output_paths: ['out.txt'],
  },
  execution_id: 'ci/uploads/0000/blobs/abc/142',
  queued_timestamp: { seconds: 1_700_000_000, nanos: 5 },
  platform_overrides: { properties: [{ name: 'OSFamily', value: 'linux' }] },
  request_metadata: { tool_invocation_id: 'inv-1', executor_details: { executor_host_id: 'h' } },
  experiments: ['arm-a'],
};

test('a Directory survives an encode/decode round trip with defaults filled in', () => {
  const decoded = decode(`${REAPI}.Directory`, encode(`${REAPI}.Directory`, directory));

  assert.deepEqual(
    decoded.files.map((f) => [f.name, f.digest?.hash, f.is_executable]),
    [['a', 'ab', true]],
  );
  assert.equal(decoded.directories[0]?.digest?.size_bytes, 0);
  assert.equal(decoded.symlinks[0]?.target, 'a');
  assert.equal(decoded.node_properties, null);
});

test('Directory encoding is canonical: number order, defaults left out', () => {
  const expected = Buffer.from(
    [
      // files (1): name 'a', digest {hash 'ab', size_bytes 3}, is_executable
      '0a 0d 0a 01 61 12 06 0a 02 61 62 10 03 20 01',
      // directories (2): name 'd', digest {hash 'cd'} (size_bytes 0 omitted)
      '12 09 0a 01 64 12 04 0a 02 63 64',
      // symlinks (3): name 'l', target 'a'
      '1a 06 0a 01 6c 12 01 61',
    ]
      .join(' ')
      .split(' ')
      .map((byte) => parseInt(byte, 16)),
  );

  const bytes = encode(`${REAPI}.Directory`, directory);

  assert.deepEqual(bytes, expected);
});

test('re-encoding a decoded message (defaults filled in) gives identical bytes', () => {
  const bytes = encode(`${REAPI}.Directory`, directory);
  const again = encode(`${REAPI}.Directory`, decode(`${REAPI}.Directory`, bytes));
  assert.deepEqual(again, bytes);

  const taskBytes = encode(`${REAPI}.ExecutionTask`, task);
  const taskAgain = encode(`${REAPI}.ExecutionTask`, decode(`${REAPI}.ExecutionTask`, taskBytes));
  assert.deepEqual(taskAgain, taskBytes);
});

test('an ExecutionTask round trip keeps nested messages, enums as names and int64 as numbers', () => {
  const decoded = decode(`${REAPI}.ExecutionTask`, encode(`${REAPI}.ExecutionTask`, task));

  assert.equal(decoded.execute_request?.digest_function, 'SHA256');
  assert.equal(decoded.execute_request?.action_digest?.size_bytes, 142);
  assert.equal(decoded.execute_request?.execution_policy?.priority, -1);
  assert.equal(decoded.action?.timeout?.seconds, 900);
  assert.equal(decoded.action?.do_not_cache, true);
  assert.deepEqual(decoded.command?.arguments, ['/bin/sh', '-c', 'echo hi > out.txt']);
  assert.deepEqual(decoded.command?.environment_variables, [{ name: 'PATH', value: '/usr/bin' }]);
  assert.equal(decoded.execution_id, 'ci/uploads/0000/blobs/abc/142');
  assert.deepEqual(decoded.queued_timestamp, { seconds: 1_700_000_000, nanos: 5 });
  assert.equal(decoded.platform_overrides?.properties[0]?.value, 'linux');
  assert.equal(decoded.request_metadata?.executor_details?.executor_host_id, 'h');
  assert.deepEqual(decoded.experiments, ['arm-a']);
});

test('decode gives the same shape a gRPC handler receives', () => {
  const bytes = encode(`${REAPI}.ExecutionTask`, task);
  const definition = grpcPackage().build.bazel.remote.execution.v2.ExecutionTask;

  assert.deepEqual(decode(`${REAPI}.ExecutionTask`, bytes), definition.deserialize(bytes));
});

test('packAny and unpackAny round-trip and reject other types', () => {
  const any = packAny(`${REAPI}.ExecuteOperationMetadata`, {
    stage: ExecutionStage.EXECUTING,
    action_digest: { hash: 'ab', size_bytes: 2 },
  });

  assert.equal(any.type_url, `type.googleapis.com/${REAPI}.ExecuteOperationMetadata`);
  const metadata = unpackAny(`${REAPI}.ExecuteOperationMetadata`, any);
  assert.equal(metadata?.stage, 'EXECUTING');
  assert.equal(metadata?.action_digest?.hash, 'ab');
  assert.equal(unpackAny(`${REAPI}.ExecuteResponse`, any), undefined);
  assert.equal(unpackAny(`${REAPI}.ExecuteResponse`, null), undefined);
  assert.equal(unpackAny(`${REAPI}.ExecuteResponse`, undefined), undefined);
});

test('an Operation carries the ExecuteResponse in its oneof result', () => {
  const bytes = encode('google.longrunning.Operation', {
    name: 'task-1',
    done: true,
    response: packAny(`${REAPI}.ExecuteResponse`, { result: { exit_code: 1 } }),
  });
  const operation = decode('google.longrunning.Operation', bytes);

  assert.equal(operation.result, 'response');
  assert.equal(operation.error, undefined);
  assert.equal(unpackAny(`${REAPI}.ExecuteResponse`, operation.response)?.result?.exit_code, 1);
});

test('grpcPackage exposes every service with the BuildBuddy and REAPI method paths', () => {
  const pkg = grpcPackage();
  const v2 = pkg.build.bazel.remote.execution.v2;

  const scheduler = pkg.scheduler.Scheduler.service;
  assert.deepEqual(Object.keys(scheduler), [
    'RegisterAndStreamWork',
    'LeaseTask',
    'TaskExists',
    'ScheduleTask',
    'ReEnqueueTask',
    'EnqueueTaskReservation',
  ]);
  assert.equal(scheduler.RegisterAndStreamWork.path, '/scheduler.Scheduler/RegisterAndStreamWork');
  assert.equal(scheduler.RegisterAndStreamWork.requestStream, true);
  assert.equal(scheduler.RegisterAndStreamWork.responseStream, true);
  assert.equal(scheduler.LeaseTask.path, '/scheduler.Scheduler/LeaseTask');
  assert.equal(scheduler.TaskExists.responseStream, false);

  const execution = v2.Execution.service;
  assert.equal(
    execution.PublishOperation.path,
    '/build.bazel.remote.execution.v2.Execution/PublishOperation',
  );
  assert.equal(execution.PublishOperation.requestStream, true);
  assert.equal(execution.PublishOperation.responseStream, false);
  assert.equal(execution.Execute.responseStream, true);

  const cas = v2.ContentAddressableStorage.service;
  assert.equal(
    cas.FindMissingBlobs.path,
    '/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs',
  );
  assert.equal(cas.GetTree.responseStream, true);
  assert.equal(
    v2.ActionCache.service.GetActionResult.path,
    '/build.bazel.remote.execution.v2.ActionCache/GetActionResult',
  );
  assert.equal(
    v2.Capabilities.service.GetCapabilities.path,
    '/build.bazel.remote.execution.v2.Capabilities/GetCapabilities',
  );

  const byteStream = pkg.google.bytestream.ByteStream.service;
  assert.equal(byteStream.Read.path, '/google.bytestream.ByteStream/Read');
  assert.equal(byteStream.Read.responseStream, true);
  assert.equal(byteStream.Write.requestStream, true);
  assert.equal(byteStream.QueryWriteStatus.path, '/google.bytestream.ByteStream/QueryWriteStatus');
});
