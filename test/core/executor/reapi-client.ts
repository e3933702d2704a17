// A small REAPI client for executor tests: uploads an input root, Command
// and Action to a server's CAS, calls Execute and collects the Operations
// up to the final ExecuteResponse.
import * as grpc from '@grpc/grpc-js';

import { digestOf, type BlobDigest } from '../../../src-main/core/digest.js';
import {
  encode,
  grpcPackage,
  unpackAny,
  type ContentAddressableStorageClient,
  type Directory,
  type ExecuteResponse__Output,
  type ExecutionClient,
  type Operation__Output,
} from '../../../src-main/core/proto/index.js';

export interface ActionSpec {
  args: string[];
  /** Input files by '/'-separated path. */
  files?: Record<string, string>;
  outputPaths?: string[];
  workingDirectory?: string;
  timeoutSeconds?: number;
  platform?: Record<string, string>;
  /** Paths in `files` whose contents are not uploaded. */
  withhold?: string[];
}

export interface Execution {
  /** Every Operation the stream delivered, the last one done. */
  operations: Operation__Output[];
  response: ExecuteResponse__Output;
}

export class ReapiClient {
  private readonly cas: ContentAddressableStorageClient;
  private readonly execution: ExecutionClient;

  constructor(address: string) {
    const v2 = grpcPackage().build.bazel.remote.execution.v2;
    const creds = grpc.credentials.createInsecure();
    this.cas = new v2.ContentAddressableStorage(address, creds) as ContentAddressableStorageClient;
    this.execution = new v2.Execution(address, creds) as ExecutionClient;
  }

  upload(blobs: Buffer[]): Promise<void> {
    const requests = blobs.map((data) => ({ digest: digestOf(data), data }));
    return new Promise((resolve, reject) =>
      this.cas.BatchUpdateBlobs({ requests }, (err, res) => {
        const bad = res?.responses.find((r) => r.status?.code !== 0);
        if (err || bad) reject(err ?? new Error(`Upload failed: ${bad!.status!.message}`));
        else resolve();
      }),
    );
  }

  read(digest: BlobDigest | null | undefined): Promise<string> {
    return new Promise((resolve, reject) =>
      this.cas.BatchReadBlobs({ digests: [digest!] }, (err, res) => {
        const r = res?.responses[0];
        if (err || r?.status?.code !== 0) reject(err ?? new Error(r?.status?.message));
        else resolve(r.data.toString());
      }),
    );
  }

  /** Uploads the Action and everything it needs; returns the action digest. */
  async uploadAction(spec: ActionSpec): Promise<BlobDigest> {
    const withheld = new Set(spec.withhold ?? []);
    const blobs: Buffer[] = [];
    for (const [path, content] of Object.entries(spec.files ?? {}))
      if (!withheld.has(path)) blobs.push(Buffer.from(content));
    const inputRoot = buildTree(spec.files ?? {}, blobs);
    const properties = Object.entries(spec.platform ?? {})
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([name, value]) => ({ name, value }));
    const command = encode('build.bazel.remote.execution.v2.Command', {
      arguments: spec.args,
      environment_variables: [{ name: 'PATH', value: '/usr/bin:/bin' }],
      output_paths: spec.outputPaths ?? [],
      working_directory: spec.workingDirectory ?? '',
      platform: { properties },
    });
    const action = encode('build.bazel.remote.execution.v2.Action', {
      command_digest: digestOf(command),
      input_root_digest: inputRoot,
      timeout: spec.timeoutSeconds ? { seconds: spec.timeoutSeconds } : null,
      platform: { properties },
    });
    await this.upload([...blobs, command, action]);
    return digestOf(action);
  }

  /** Calls Execute and waits for the done Operation. */
  execute(
    actionDigest: BlobDigest,
    opts: { skipCacheLookup?: boolean; onOperation?: (op: Operation__Output) => void } = {},
  ): Promise<Execution> {
    const call = this.execution.Execute({
      action_digest: actionDigest,
      skip_cache_lookup: opts.skipCacheLookup ?? false,
    });
    const operations: Operation__Output[] = [];
    return new Promise((resolve, reject) => {
      call.on('data', (op: Operation__Output) => {
        operations.push(op);
        opts.onOperation?.(op);
        if (!op.done) return;
        const response = unpackAny('build.bazel.remote.execution.v2.ExecuteResponse', op.response);
        if (response) resolve({ operations, response });
        else reject(new Error('The done Operation has no ExecuteResponse'));
      });
      call.on('error', reject);
    });
  }

  close(): void {
    this.cas.close();
    this.execution.close();
  }
}

export function stageOf(op: Operation__Output): string | undefined {
  return unpackAny('build.bazel.remote.execution.v2.ExecuteOperationMetadata', op.metadata)?.stage;
}

/** The ExecutionProgress state an EXECUTING Operation carries, if any. */
export function progressOf(op: Operation__Output): string | undefined {
  const metadata = unpackAny(
    'build.bazel.remote.execution.v2.ExecuteOperationMetadata',
    op.metadata,
  );
  const progress = metadata?.partial_execution_metadata?.auxiliary_metadata ?? [];
  return progress
    .map((any) => unpackAny('build.bazel.remote.execution.v2.ExecutionProgress', any))
    .find((p) => p !== undefined)?.execution_state;
}

/** Encodes the Directory tree of `files`, adding each Directory to `blobs`; returns the root digest. */
function buildTree(files: Record<string, string>, blobs: Buffer[]): BlobDigest {
  interface Node {
    files: Map<string, string>;
    dirs: Map<string, Node>;
  }
  const root: Node = { files: new Map(), dirs: new Map() };
  for (const [path, content] of Object.entries(files)) {
    const parts = path.split('/');
    let node = root;
    for (const dir of parts.slice(0, -1)) {
      if (!node.dirs.has(dir)) node.dirs.set(dir, { files: new Map(), dirs: new Map() });
      node = node.dirs.get(dir)!;
    }
    node.files.set(parts.at(-1)!, content);
  }
  const encodeNode = (node: Node): BlobDigest => {
    const sorted = <T>(m: Map<string, T>) => [...m].sort(([a], [b]) => (a < b ? -1 : 1));
    const directory: Directory = {
      files: sorted(node.files).map(([name, c]) => ({ name, digest: digestOf(Buffer.from(c)) })),
      directories: sorted(node.dirs).map(([name, d]) => ({ name, digest: encodeNode(d) })),
    };
    const bytes = encode('build.bazel.remote.execution.v2.Directory', directory);
    blobs.push(bytes);
    return digestOf(bytes);
  };
  return encodeNode(root);
}
