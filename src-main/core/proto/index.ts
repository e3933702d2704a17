// The protocol runtime shared by every module: one loaded copy of our .proto
// files, for gRPC (services and handlers) and for direct message coding
// (digests, Any payloads, serialized tasks).
//
// Both paths use the same conversion options, so a message decoded here has
// exactly the shape a gRPC handler receives: field names as in the .proto,
// 64-bit integers as numbers, enums as their names, defaults filled in and
// each oneof's chosen field named in a virtual property.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

import type { ProtoGrpcType as BytestreamGrpc } from './gen/bytestream.js';
import type { ProtoGrpcType as CodeGrpc } from './gen/code.js';
import type { ProtoGrpcType as ErrorDetailsGrpc } from './gen/error_details.js';
import type { ProtoGrpcType as ExecutionStatsGrpc } from './gen/execution_stats.js';
import type { Messages } from './gen/messages.js';
import type { ProtoGrpcType as OperationsGrpc } from './gen/operations.js';
import type { ProtoGrpcType as RemoteExecutionGrpc } from './gen/remote_execution.js';
import type { ProtoGrpcType as SchedulerGrpc } from './gen/scheduler.js';
import type { ProtoGrpcType as SemverGrpc } from './gen/semver.js';
import type { ProtoGrpcType as StatusGrpc } from './gen/status.js';
import type { ProtoGrpcType as TraceGrpc } from './gen/trace.js';

export type { Messages };

const PROTO_MARKER = 'build/bazel/remote/execution/v2/remote_execution.proto';

/** Every message type we ship, keyed by full name ('build.bazel.remote.execution.v2.Directory'). */
export type MessageName = keyof Messages;

/** The loaded gRPC package tree, with every service constructor and message definition typed. */
export type ProtoGrpcType = RemoteExecutionGrpc &
  SchedulerGrpc &
  ExecutionStatsGrpc &
  TraceGrpc &
  BytestreamGrpc &
  OperationsGrpc &
  StatusGrpc &
  CodeGrpc &
  ErrorDetailsGrpc &
  SemverGrpc;

/**
 * Absolute path of the repository's protos/ directory, the only include path.
 * The source file sits three levels below the repository root and the
 * compiled one (under dist/) four, so both places are tried.
 */
export const PROTO_DIR: string = findProtoDir();

function findProtoDir(): string {
  const candidates = ['../../../protos', '../../../../protos'].map((relative) =>
    fileURLToPath(new URL(relative, import.meta.url)),
  );
  const found = candidates.find((dir) => existsSync(join(dir, PROTO_MARKER)));
  if (found === undefined) {
    throw new Error(`Failed to find the protos directory: tried '${candidates.join("', '")}'`);
  }
  return found;
}

/** Our .proto files, relative to PROTO_DIR. Their imports are loaded with them. */
export const PROTO_FILES: readonly string[] = [
  'build/bazel/remote/execution/v2/remote_execution.proto',
  'build/bazel/semver/semver.proto',
  'google/bytestream/bytestream.proto',
  'google/longrunning/operations.proto',
  'google/rpc/code.proto',
  'google/rpc/error_details.proto',
  'google/rpc/status.proto',
  'proto/execution_stats.proto',
  'proto/scheduler.proto',
  'proto/trace.proto',
];

/** Conversion options shared by gRPC loading and by decode(); see the file comment. */
export const LOADER_OPTIONS: {
  keepCase: true;
  longs: NumberConstructor;
  enums: StringConstructor;
  defaults: true;
  oneofs: true;
} = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

const TYPE_URL_PREFIX = 'type.googleapis.com/';

let cachedGrpcPackage: ProtoGrpcType | undefined;
let cachedRoot: protobuf.Root | undefined;
const typeCache = new Map<string, protobuf.Type>();

/** Loads all our protos for @grpc/grpc-js once and returns the package tree. */
export function grpcPackage(): ProtoGrpcType {
  if (cachedGrpcPackage === undefined) {
    const definition = protoLoader.loadSync([...PROTO_FILES], {
      ...LOADER_OPTIONS,
      includeDirs: [PROTO_DIR],
    });
    cachedGrpcPackage = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  }
  return cachedGrpcPackage;
}

/**
 * Loads all our protos with protobufjs into a fresh Root. The google/protobuf
 * well-known types come from protobufjs's bundled copies.
 */
export function loadProtoRoot(): protobuf.Root {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => join(PROTO_DIR, target);
  root.loadSync([...PROTO_FILES], { keepCase: true });
  root.resolveAll();
  return root;
}

/** The shared protobufjs Root behind encode() and decode(). */
export function protoRoot(): protobuf.Root {
  cachedRoot ??= loadProtoRoot();
  return cachedRoot;
}

function messageType(name: string): protobuf.Type {
  let type = typeCache.get(name);
  if (type === undefined) {
    type = protoRoot().lookupType(name);
    typeCache.set(name, type);
  }
  return type;
}

/**
 * Serializes a message in canonical form: fields in number order, and
 * implicit-presence scalars that hold their default value left out, as the
 * Go implementation does. Digests of Directory, Action and Command depend on
 * this.
 */
export function encode<N extends MessageName>(name: N, value: Messages[N]['input']): Buffer {
  const type = messageType(name);
  const message = type.fromObject(value as Record<string, unknown>);
  dropDefaults(type, message as unknown as Record<string, unknown>);
  const bytes = type.encode(message).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Parses a message into the same shape a gRPC handler receives. */
export function decode<N extends MessageName>(name: N, bytes: Uint8Array): Messages[N]['output'] {
  const type = messageType(name);
  return type.toObject(type.decode(bytes), LOADER_OPTIONS) as Messages[N]['output'];
}

/** Wraps a message in a google.protobuf.Any with the standard type URL. */
export function packAny<N extends MessageName>(
  name: N,
  value: Messages[N]['input'],
): { type_url: string; value: Buffer } {
  return { type_url: TYPE_URL_PREFIX + name, value: encode(name, value) };
}

/** Unwraps an Any holding the named message; undefined when it holds another type or nothing. */
export function unpackAny<N extends MessageName>(
  name: N,
  any: { type_url?: string; value?: Uint8Array | null } | null | undefined,
): Messages[N]['output'] | undefined {
  if (any == null || any.type_url !== TYPE_URL_PREFIX + name) return undefined;
  return decode(name, any.value ?? new Uint8Array(0));
}

// Removes, recursively, proto3 implicit-presence fields set to their default
// (0, false, '', empty bytes, first enum value). protobufjs writes any field
// that is present on the object, even a default, which Go never does.
// Fields with explicit presence (oneof members, proto3 `optional`) are kept.
function dropDefaults(type: protobuf.Type, message: Record<string, unknown>): void {
  for (const field of type.fieldsArray) {
    const value = message[field.name];
    if (value == null) continue;
    const nested = field.resolvedType instanceof protobuf.Type ? field.resolvedType : undefined;
    if (field.map || field.repeated) {
      if (nested === undefined) continue;
      const items = field.map ? Object.values(value as object) : (value as unknown[]);
      for (const item of items) dropDefaults(nested, item as Record<string, unknown>);
    } else if (nested !== undefined) {
      dropDefaults(nested, value as Record<string, unknown>);
    } else if (field.partOf === null && isDefaultScalar(value)) {
      delete message[field.name];
    }
  }
}

function isDefaultScalar(value: unknown): boolean {
  if (value === 0 || value === false || value === '') return true;
  if (value instanceof Uint8Array) return value.length === 0;
  if (typeof value === 'object' && value !== null && 'low' in value && 'high' in value) {
    return value.low === 0 && value.high === 0;
  }
  return false;
}

// Short names for the generated message types. X is what callers may pass in
// (all fields optional); X__Output is what decode() and handlers produce.
export type { Action, Action__Output } from './gen/build/bazel/remote/execution/v2/Action.js';
export type {
  ActionResult,
  ActionResult__Output,
} from './gen/build/bazel/remote/execution/v2/ActionResult.js';
export type {
  BatchReadBlobsRequest,
  BatchReadBlobsRequest__Output,
} from './gen/build/bazel/remote/execution/v2/BatchReadBlobsRequest.js';
export type {
  BatchReadBlobsResponse,
  BatchReadBlobsResponse__Output,
  _build_bazel_remote_execution_v2_BatchReadBlobsResponse_Response as BatchReadBlobsResponse_Response,
  _build_bazel_remote_execution_v2_BatchReadBlobsResponse_Response__Output as BatchReadBlobsResponse_Response__Output,
} from './gen/build/bazel/remote/execution/v2/BatchReadBlobsResponse.js';
export type {
  BatchUpdateBlobsRequest,
  BatchUpdateBlobsRequest__Output,
  _build_bazel_remote_execution_v2_BatchUpdateBlobsRequest_Request as BatchUpdateBlobsRequest_Request,
  _build_bazel_remote_execution_v2_BatchUpdateBlobsRequest_Request__Output as BatchUpdateBlobsRequest_Request__Output,
} from './gen/build/bazel/remote/execution/v2/BatchUpdateBlobsRequest.js';
export type {
  BatchUpdateBlobsResponse,
  BatchUpdateBlobsResponse__Output,
  _build_bazel_remote_execution_v2_BatchUpdateBlobsResponse_Response as BatchUpdateBlobsResponse_Response,
  _build_bazel_remote_execution_v2_BatchUpdateBlobsResponse_Response__Output as BatchUpdateBlobsResponse_Response__Output,
} from './gen/build/bazel/remote/execution/v2/BatchUpdateBlobsResponse.js';
export type {
  CacheCapabilities,
  CacheCapabilities__Output,
} from './gen/build/bazel/remote/execution/v2/CacheCapabilities.js';
export type {
  Command,
  Command__Output,
  _build_bazel_remote_execution_v2_Command_EnvironmentVariable as Command_EnvironmentVariable,
  _build_bazel_remote_execution_v2_Command_EnvironmentVariable__Output as Command_EnvironmentVariable__Output,
} from './gen/build/bazel/remote/execution/v2/Command.js';
export type { Digest, Digest__Output } from './gen/build/bazel/remote/execution/v2/Digest.js';
export type {
  Directory,
  Directory__Output,
} from './gen/build/bazel/remote/execution/v2/Directory.js';
export type {
  DirectoryNode,
  DirectoryNode__Output,
} from './gen/build/bazel/remote/execution/v2/DirectoryNode.js';
export type {
  ExecuteOperationMetadata,
  ExecuteOperationMetadata__Output,
} from './gen/build/bazel/remote/execution/v2/ExecuteOperationMetadata.js';
export type {
  ExecuteRequest,
  ExecuteRequest__Output,
} from './gen/build/bazel/remote/execution/v2/ExecuteRequest.js';
export type {
  ExecuteResponse,
  ExecuteResponse__Output,
} from './gen/build/bazel/remote/execution/v2/ExecuteResponse.js';
export type {
  ExecutedActionMetadata,
  ExecutedActionMetadata__Output,
} from './gen/build/bazel/remote/execution/v2/ExecutedActionMetadata.js';
export type {
  ExecutionCapabilities,
  ExecutionCapabilities__Output,
} from './gen/build/bazel/remote/execution/v2/ExecutionCapabilities.js';
export type {
  ExecutionProgress,
  ExecutionProgress__Output,
} from './gen/build/bazel/remote/execution/v2/ExecutionProgress.js';
export type {
  ExecutionTask,
  ExecutionTask__Output,
} from './gen/build/bazel/remote/execution/v2/ExecutionTask.js';
export type {
  ExecutorDetails,
  ExecutorDetails__Output,
} from './gen/build/bazel/remote/execution/v2/ExecutorDetails.js';
export type { FileNode, FileNode__Output } from './gen/build/bazel/remote/execution/v2/FileNode.js';
export type {
  FindMissingBlobsRequest,
  FindMissingBlobsRequest__Output,
} from './gen/build/bazel/remote/execution/v2/FindMissingBlobsRequest.js';
export type {
  FindMissingBlobsResponse,
  FindMissingBlobsResponse__Output,
} from './gen/build/bazel/remote/execution/v2/FindMissingBlobsResponse.js';
export type {
  GetActionResultRequest,
  GetActionResultRequest__Output,
} from './gen/build/bazel/remote/execution/v2/GetActionResultRequest.js';
export type {
  GetCapabilitiesRequest,
  GetCapabilitiesRequest__Output,
} from './gen/build/bazel/remote/execution/v2/GetCapabilitiesRequest.js';
export type {
  GetTreeRequest,
  GetTreeRequest__Output,
} from './gen/build/bazel/remote/execution/v2/GetTreeRequest.js';
export type {
  GetTreeResponse,
  GetTreeResponse__Output,
} from './gen/build/bazel/remote/execution/v2/GetTreeResponse.js';
export type { IOStats, IOStats__Output } from './gen/build/bazel/remote/execution/v2/IOStats.js';
export type { LogFile, LogFile__Output } from './gen/build/bazel/remote/execution/v2/LogFile.js';
export type {
  NodeProperties,
  NodeProperties__Output,
} from './gen/build/bazel/remote/execution/v2/NodeProperties.js';
export type {
  NodeProperty,
  NodeProperty__Output,
} from './gen/build/bazel/remote/execution/v2/NodeProperty.js';
export type {
  OutputDirectory,
  OutputDirectory__Output,
} from './gen/build/bazel/remote/execution/v2/OutputDirectory.js';
export type {
  OutputFile,
  OutputFile__Output,
} from './gen/build/bazel/remote/execution/v2/OutputFile.js';
export type {
  OutputSymlink,
  OutputSymlink__Output,
} from './gen/build/bazel/remote/execution/v2/OutputSymlink.js';
export type {
  Platform,
  Platform__Output,
  _build_bazel_remote_execution_v2_Platform_Property as Platform_Property,
  _build_bazel_remote_execution_v2_Platform_Property__Output as Platform_Property__Output,
} from './gen/build/bazel/remote/execution/v2/Platform.js';
export type {
  PublishOperationResponse,
  PublishOperationResponse__Output,
} from './gen/build/bazel/remote/execution/v2/PublishOperationResponse.js';
export type {
  RequestMetadata,
  RequestMetadata__Output,
} from './gen/build/bazel/remote/execution/v2/RequestMetadata.js';
export type {
  ServerCapabilities,
  ServerCapabilities__Output,
} from './gen/build/bazel/remote/execution/v2/ServerCapabilities.js';
export type {
  SymlinkNode,
  SymlinkNode__Output,
} from './gen/build/bazel/remote/execution/v2/SymlinkNode.js';
export type { Tree, Tree__Output } from './gen/build/bazel/remote/execution/v2/Tree.js';
export type {
  UpdateActionResultRequest,
  UpdateActionResultRequest__Output,
} from './gen/build/bazel/remote/execution/v2/UpdateActionResultRequest.js';
export type {
  UsageStats,
  UsageStats__Output,
} from './gen/build/bazel/remote/execution/v2/UsageStats.js';
export type {
  WaitExecutionRequest,
  WaitExecutionRequest__Output,
} from './gen/build/bazel/remote/execution/v2/WaitExecutionRequest.js';

// Enums: each name is both a value (ExecutionStage.COMPLETED === 'COMPLETED')
// and the type of accepted values; X__Output is the name-only type.
export {
  _build_bazel_remote_execution_v2_Compressor_Value as Compressor,
  type _build_bazel_remote_execution_v2_Compressor_Value__Output as Compressor__Output,
} from './gen/build/bazel/remote/execution/v2/Compressor.js';
export {
  _build_bazel_remote_execution_v2_DigestFunction_Value as DigestFunction,
  type _build_bazel_remote_execution_v2_DigestFunction_Value__Output as DigestFunction__Output,
} from './gen/build/bazel/remote/execution/v2/DigestFunction.js';
export {
  _build_bazel_remote_execution_v2_ExecutionProgress_ExecutionState as ExecutionState,
  type _build_bazel_remote_execution_v2_ExecutionProgress_ExecutionState__Output as ExecutionState__Output,
} from './gen/build/bazel/remote/execution/v2/ExecutionProgress.js';
export {
  _build_bazel_remote_execution_v2_ExecutionStage_Value as ExecutionStage,
  type _build_bazel_remote_execution_v2_ExecutionStage_Value__Output as ExecutionStage__Output,
} from './gen/build/bazel/remote/execution/v2/ExecutionStage.js';

// Services: client and handler interfaces.
export type {
  ActionCacheClient,
  ActionCacheHandlers,
} from './gen/build/bazel/remote/execution/v2/ActionCache.js';
export type {
  CapabilitiesClient,
  CapabilitiesHandlers,
} from './gen/build/bazel/remote/execution/v2/Capabilities.js';
export type {
  ContentAddressableStorageClient,
  ContentAddressableStorageHandlers,
} from './gen/build/bazel/remote/execution/v2/ContentAddressableStorage.js';
export type {
  ExecutionClient,
  ExecutionHandlers,
} from './gen/build/bazel/remote/execution/v2/Execution.js';
export type { ByteStreamClient, ByteStreamHandlers } from './gen/google/bytestream/ByteStream.js';
export type { SchedulerClient, SchedulerHandlers } from './gen/scheduler/Scheduler.js';

// google.bytestream
export type {
  QueryWriteStatusRequest,
  QueryWriteStatusRequest__Output,
} from './gen/google/bytestream/QueryWriteStatusRequest.js';
export type {
  QueryWriteStatusResponse,
  QueryWriteStatusResponse__Output,
} from './gen/google/bytestream/QueryWriteStatusResponse.js';
export type { ReadRequest, ReadRequest__Output } from './gen/google/bytestream/ReadRequest.js';
export type { ReadResponse, ReadResponse__Output } from './gen/google/bytestream/ReadResponse.js';
export type { WriteRequest, WriteRequest__Output } from './gen/google/bytestream/WriteRequest.js';
export type {
  WriteResponse,
  WriteResponse__Output,
} from './gen/google/bytestream/WriteResponse.js';

// google.longrunning, google.rpc, google.protobuf
export type { Operation, Operation__Output } from './gen/google/longrunning/Operation.js';
export type { Status, Status__Output } from './gen/google/rpc/Status.js';
export type {
  PreconditionFailure,
  PreconditionFailure__Output,
  _google_rpc_PreconditionFailure_Violation as PreconditionFailure_Violation,
  _google_rpc_PreconditionFailure_Violation__Output as PreconditionFailure_Violation__Output,
} from './gen/google/rpc/PreconditionFailure.js';
export type {
  BadRequest,
  BadRequest__Output,
  _google_rpc_BadRequest_FieldViolation as BadRequest_FieldViolation,
  _google_rpc_BadRequest_FieldViolation__Output as BadRequest_FieldViolation__Output,
} from './gen/google/rpc/BadRequest.js';
export type { RetryInfo, RetryInfo__Output } from './gen/google/rpc/RetryInfo.js';
export type { Any, Any__Output } from './gen/google/protobuf/Any.js';
export type { Duration, Duration__Output } from './gen/google/protobuf/Duration.js';
export type { Timestamp, Timestamp__Output } from './gen/google/protobuf/Timestamp.js';

// scheduler
export type { CustomResource, CustomResource__Output } from './gen/scheduler/CustomResource.js';
export type {
  EnqueueTaskReservationRequest,
  EnqueueTaskReservationRequest__Output,
} from './gen/scheduler/EnqueueTaskReservationRequest.js';
export type {
  EnqueueTaskReservationResponse,
  EnqueueTaskReservationResponse__Output,
} from './gen/scheduler/EnqueueTaskReservationResponse.js';
export type { ExecutionNode, ExecutionNode__Output } from './gen/scheduler/ExecutionNode.js';
export type {
  LeaseTaskRequest,
  LeaseTaskRequest__Output,
} from './gen/scheduler/LeaseTaskRequest.js';
export type {
  LeaseTaskResponse,
  LeaseTaskResponse__Output,
} from './gen/scheduler/LeaseTaskResponse.js';
export type {
  ReEnqueueTaskRequest,
  ReEnqueueTaskRequest__Output,
} from './gen/scheduler/ReEnqueueTaskRequest.js';
export type {
  ReEnqueueTaskResponse,
  ReEnqueueTaskResponse__Output,
} from './gen/scheduler/ReEnqueueTaskResponse.js';
export type {
  RegisterAndStreamWorkRequest,
  RegisterAndStreamWorkRequest__Output,
} from './gen/scheduler/RegisterAndStreamWorkRequest.js';
export type {
  RegisterAndStreamWorkResponse,
  RegisterAndStreamWorkResponse__Output,
} from './gen/scheduler/RegisterAndStreamWorkResponse.js';
export type {
  ScheduleTaskRequest,
  ScheduleTaskRequest__Output,
} from './gen/scheduler/ScheduleTaskRequest.js';
export type {
  ScheduleTaskResponse,
  ScheduleTaskResponse__Output,
} from './gen/scheduler/ScheduleTaskResponse.js';
export type {
  SchedulingMetadata,
  SchedulingMetadata__Output,
} from './gen/scheduler/SchedulingMetadata.js';
export type {
  TaskExistsRequest,
  TaskExistsRequest__Output,
} from './gen/scheduler/TaskExistsRequest.js';
export type {
  TaskExistsResponse,
  TaskExistsResponse__Output,
} from './gen/scheduler/TaskExistsResponse.js';
export type { TaskSize, TaskSize__Output } from './gen/scheduler/TaskSize.js';

// execution_stats
export type {
  ExecutionAuxiliaryMetadata,
  ExecutionAuxiliaryMetadata__Output,
} from './gen/execution_stats/ExecutionAuxiliaryMetadata.js';
export type {
  RunnerMetadata,
  RunnerMetadata__Output,
} from './gen/execution_stats/RunnerMetadata.js';
