import type { ActionCacheStore, BlobStore } from '../cas/types.js';
import { checkDigest, digestKey, type BlobDigest } from '../digest.js';
import { invalidArgument, notFound } from '../errors.js';
import { relativePathProblem } from '../paths.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';
import {
  grpcPackage,
  type ActionCacheHandlers,
  type ActionResult,
  type ActionResult__Output,
  type Digest__Output,
  type GetActionResultRequest__Output,
  type UpdateActionResultRequest__Output,
} from '../proto/index.js';
import { checkDigestFunction, unaryHandler, type GrpcService } from './grpc-service.js';

/** Most bytes of stdout, stderr and output files inlined into one GetActionResult response. */
export const INLINE_BUDGET_BYTES = 1024 * 1024;

/**
 * The REAPI ActionCache service over an ActionCacheStore and the BlobStore
 * its results point into. The instance name is accepted and ignored (one
 * namespace); only SHA256 is served.
 *
 * - GetActionResult: NOT_FOUND on a miss, and also when a blob the result
 *   references (output files, stdout/stderr, output directories' Trees) is
 *   missing from the CAS, so clients run the action again instead of failing
 *   later on a download. Inlines stdout, stderr and the requested output
 *   files when asked, up to INLINE_BUDGET_BYTES in total.
 * - UpdateActionResult: validates the result (see checkActionResult),
 *   stores it and returns it.
 *
 * Limitation: the files inside an output directory's Tree are not checked
 * for presence, only the Tree blob itself.
 */
export function createActionCacheService(opts: {
  actionCache: ActionCacheStore;
  blobStore: BlobStore;
  logger?: Logger;
}): GrpcService {
  const log = moduleLogger(opts.logger ?? silentLogger, 'ac');
  const implementation: ActionCacheHandlers = {
    GetActionResult: unaryHandler(log, 'GetActionResult', (req) => getActionResult(opts, req)),
    UpdateActionResult: unaryHandler(log, 'UpdateActionResult', (req) =>
      updateActionResult(opts.actionCache, req),
    ),
  };
  const definition = grpcPackage().build.bazel.remote.execution.v2.ActionCache.service;
  return { definition, implementation };
}

async function getActionResult(
  stores: { actionCache: ActionCacheStore; blobStore: BlobStore },
  req: GetActionResultRequest__Output,
): Promise<ActionResult> {
  checkDigestFunction(req.digest_function);
  const action = checkDigest(req.action_digest);
  const result = await stores.actionCache.get(action);
  if (result === undefined)
    throw notFound(`No action result for action "${digestKey(action)}" in the Action Cache`);
  const missing = missingReference(stores.blobStore, result);
  if (missing !== undefined)
    throw notFound(
      `The action result for action "${digestKey(action)}" references blob "${missing}", ` +
        'which is not in the CAS',
    );
  return inline(stores.blobStore, result, req);
}

/**
 * The first blob an ActionResult references that is absent from the CAS, as
 * "hash/size", if any. A result with a missing blob is not a usable cache hit.
 */
export function missingReference(
  store: BlobStore,
  result: ActionResult__Output,
): string | undefined {
  for (const d of referencedDigests(result)) {
    let digest: BlobDigest;
    try {
      digest = checkDigest(d);
    } catch {
      return digestKey(d);
    }
    if (store.findMissing([digest]).length > 0) return digestKey(digest);
  }
  return undefined;
}

/**
 * Checks an ActionResult before it is cached or handed to clients: every
 * digest well-formed, every output path relative, canonical and free of
 * "..", so that a client trusting the cache never writes outside its
 * working directory. Only an output directory may have the empty path (the
 * whole working directory). INVALID_ARGUMENT naming the bad value.
 */
export function checkActionResult(result: ActionResult__Output): void {
  for (const d of referencedDigests(result)) checkDigest(d);
  const symlinks = [
    ...result.output_symlinks,
    ...result.output_file_symlinks,
    ...result.output_directory_symlinks,
  ];
  const paths = [
    ...[...result.output_files, ...symlinks].map((o) => ({ path: o.path, allowEmpty: false })),
    ...result.output_directories.map((o) => ({ path: o.path, allowEmpty: true })),
  ];
  for (const { path, allowEmpty } of paths) {
    const problem = relativePathProblem(path, { allowEmpty });
    if (problem) throw invalidArgument(`Invalid output path "${path}" in ActionResult: ${problem}`);
  }
}

function referencedDigests(result: ActionResult__Output): Digest__Output[] {
  const all = [
    ...result.output_files.map((f) => f.digest),
    ...result.output_directories.map((d) => d.tree_digest),
    ...result.output_directories.map((d) => d.root_directory_digest),
    result.stdout_digest,
    result.stderr_digest,
  ];
  return all.filter((d): d is Digest__Output => d != null && !(d.hash === '' && !d.size_bytes));
}

/** A copy of result with stdout, stderr and requested output files inlined, within budget. */
async function inline(
  store: BlobStore,
  result: ActionResult__Output,
  req: GetActionResultRequest__Output,
): Promise<ActionResult> {
  let budget = INLINE_BUDGET_BYTES;
  const read = async (d: Digest__Output | null): Promise<Buffer | undefined> => {
    if (d == null || d.size_bytes > budget) return undefined;
    const data = await store.get(checkDigest(d));
    if (data !== undefined) budget -= data.length;
    return data;
  };
  const out: ActionResult = { ...result };
  if (req.inline_stdout) out.stdout_raw = (await read(result.stdout_digest)) ?? result.stdout_raw;
  if (req.inline_stderr) out.stderr_raw = (await read(result.stderr_digest)) ?? result.stderr_raw;
  const wanted = new Set(req.inline_output_files);
  if (wanted.size > 0) {
    out.output_files = [];
    for (const f of result.output_files) {
      const contents = wanted.has(f.path) ? await read(f.digest) : undefined;
      out.output_files.push(contents ? { ...f, contents } : f);
    }
  }
  return out;
}

async function updateActionResult(
  actionCache: ActionCacheStore,
  req: UpdateActionResultRequest__Output,
): Promise<ActionResult> {
  checkDigestFunction(req.digest_function);
  const action = checkDigest(req.action_digest);
  const result = req.action_result;
  if (result == null)
    throw invalidArgument(
      `UpdateActionResult for action "${digestKey(action)}" has no action_result`,
    );
  checkActionResult(result);
  await actionCache.put(action, result);
  return result;
}
