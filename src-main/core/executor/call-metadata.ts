import * as grpc from '@grpc/grpc-js';

import { encode, type ExecutionTask__Output, type RequestMetadata } from '../proto/index.js';

/** The binary RequestMetadata header of REAPI. */
export const REQUEST_METADATA_HEADER = 'build.bazel.remote.execution.v2.requestmetadata-bin';

/**
 * Headers for every task-scoped call (PublishOperation, CAS, Action Cache,
 * ByteStream), as BuildBuddy's executor sends them:
 * - `x-buildbuddy-jwt`: the task's JWT, else the reservation's, when non-empty;
 * - `build.bazel.remote.execution.v2.requestmetadata-bin`: the task's
 *   RequestMetadata (or one naming its invocation) with
 *   executor_details.executor_host_id set to this host;
 * - `x-buildbuddy-client` and `x-buildbuddy-origin` (sent even when empty).
 * Never carries the API key.
 */
export function taskCallMetadata(opts: {
  task: ExecutionTask__Output;
  reservationJwt: string;
  hostId: string;
  clientType?: string;
  origin?: string;
}): grpc.Metadata {
  const metadata = new grpc.Metadata();
  const jwt = opts.task.jwt || opts.reservationJwt;
  if (jwt) metadata.set('x-buildbuddy-jwt', jwt);
  const requestMetadata: RequestMetadata = opts.task.request_metadata
    ? { ...opts.task.request_metadata }
    : { tool_invocation_id: opts.task.invocation_id };
  requestMetadata.executor_details = { executor_host_id: opts.hostId };
  metadata.set(
    REQUEST_METADATA_HEADER,
    encode('build.bazel.remote.execution.v2.RequestMetadata', requestMetadata),
  );
  metadata.set('x-buildbuddy-client', opts.clientType ?? 'executor');
  metadata.set('x-buildbuddy-origin', opts.origin ?? '');
  return metadata;
}
