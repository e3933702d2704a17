import { moduleLogger, silentLogger, type Logger } from '../log.js';
import { grpcPackage, type CapabilitiesHandlers, type ServerCapabilities } from '../proto/index.js';
import { unaryHandler, type GrpcService } from './grpc-service.js';
import { MAX_BATCH_TOTAL_SIZE_BYTES } from './server-options.js';

/**
 * What the embedded server advertises to REAPI clients.
 *
 * - SHA256 only, for caching and execution (both the legacy singular
 *   `digest_function`, which Bazel before 6 compares against its own, and
 *   the `digest_functions` list).
 * - API versions 2.0 to 2.3: Bazel 4.x speaks exactly 2.0 and rejects a
 *   server whose range excludes it; newer clients pick the highest common
 *   version (2.1+ means `output_paths`, which our executor honours).
 * - Symlinks with absolute targets: DISALLOWED. Our executor rejects input
 *   roots with absolute or escaping symlink targets, so advertising ALLOWED
 *   would invite actions that then fail; a conforming client sends no such
 *   symlinks to a server that disallows them.
 * - No compressors, for ByteStream or batches; no SplitBlob / SpliceBlob.
 */
export function serverCapabilities(opts: {
  execEnabled: boolean;
  maxBatchTotalSizeBytes?: number;
}): ServerCapabilities {
  return {
    cache_capabilities: {
      digest_functions: ['SHA256'],
      action_cache_update_capabilities: { update_enabled: true },
      max_batch_total_size_bytes: opts.maxBatchTotalSizeBytes ?? MAX_BATCH_TOTAL_SIZE_BYTES,
      symlink_absolute_path_strategy: 'DISALLOWED',
      supported_compressors: [],
      supported_batch_update_compressors: [],
    },
    execution_capabilities: {
      digest_function: 'SHA256',
      digest_functions: ['SHA256'],
      exec_enabled: opts.execEnabled,
    },
    low_api_version: { major: 2, minor: 0 },
    high_api_version: { major: 2, minor: 3 },
  };
}

/**
 * The REAPI Capabilities service. `execEnabled` says whether this server
 * runs actions (true when the composer also serves Execution); the instance
 * name is ignored.
 */
export function createCapabilitiesService(opts: {
  execEnabled: boolean;
  maxBatchTotalSizeBytes?: number;
  logger?: Logger;
}): GrpcService {
  const log = moduleLogger(opts.logger ?? silentLogger, 'capabilities');
  const capabilities = serverCapabilities(opts);
  const implementation: CapabilitiesHandlers = {
    GetCapabilities: unaryHandler(log, 'GetCapabilities', async () => capabilities),
  };
  const definition = grpcPackage().build.bazel.remote.execution.v2.Capabilities.service;
  return { definition, implementation };
}
