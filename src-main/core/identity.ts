import { randomUUID } from 'node:crypto';
import { link, mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Config } from './config.js';
import { failedPrecondition, GrpcError, invalidArgument, wrap } from './errors.js';

/**
 * Who this executor is and what it offers, as registration
 * (ExecutionNode) and task metadata need it. Computed once at startup by
 * resolveIdentity and immutable for the life of the process.
 */
export interface Identity {
  /** Random UUIDv4, new for every process (ExecutionNode.executor_id). */
  readonly executorId: string;
  /** Stable across restarts (ExecutionNode.executor_host_id, ExecutedActionMetadata.worker). */
  readonly hostId: string;
  /** MY_HOSTNAME or the OS hostname; never empty (ExecutionNode.host). */
  readonly hostname: string;
  /** Lower-cased pool name; "" is the default pool. */
  readonly pool: string;
  /** Go's GOOS name: linux, darwin, windows, … */
  readonly osFamily: string;
  /** Go's GOARCH name: amd64, arm64, 386, arm, … */
  readonly arch: string;
  /** Human-readable OS name, best effort ("Ubuntu 24.04.1 LTS", "macOS 15"). */
  readonly osDisplayName: string;
  /** CPU this executor may hand out, in millicpu. */
  readonly assignableMilliCpu: number;
  /** Memory this executor may hand out, in bytes. */
  readonly assignableMemoryBytes: number;
  /** Idlebuild's version, from package.json. */
  readonly version: string;
}

/**
 * Computes the Identity from the config and environment. Reads, or on first
 * start creates, <metadata_dir>/host_id. Throws INVALID_ARGUMENT for
 * conflicting or malformed settings, naming the setting.
 */
export async function resolveIdentity(
  config: Config,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Identity> {
  return {
    executorId: randomUUID(),
    hostId: await resolveHostId(config),
    hostname: resolveHostname(env),
    pool: resolvePool(config, env),
    osFamily: goOs(process.platform),
    arch: goArch(process.arch),
    osDisplayName: await osDisplayName(),
    assignableMilliCpu: assignableMilliCpu(config, env),
    assignableMemoryBytes: assignableMemoryBytes(config, env),
    version: await readVersion(),
  };
}

/** executor.metadata_directory, else dirname(local_cache_directory)/metadata. */
export function metadataDirectory(config: Config): string {
  const e = config.executor;
  return e.metadata_directory || path.join(path.dirname(e.local_cache_directory), 'metadata');
}

/** executor.host_id, else the ID stored in <metadata_dir>/host_id, created if absent. */
async function resolveHostId(config: Config): Promise<string> {
  const configured = config.executor.host_id.trim();
  if (configured) return configured;
  const dir = metadataDirectory(config);
  const file = path.join(dir, 'host_id');
  try {
    await mkdir(dir, { recursive: true });
    return (await readHostId(file)) ?? (await createHostId(file));
  } catch (err) {
    if (err instanceof GrpcError) throw err;
    throw wrap(err, `Failed to read or create the host ID in "${file}"`);
  }
}

async function readHostId(file: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const id = text.trim();
  if (!id) {
    throw failedPrecondition(
      `Host ID file "${file}" is empty: delete it to generate a new host ID`,
    );
  }
  return id;
}

/**
 * Writes a fresh ID to a temporary file and hard-links it into place, so the
 * file appears complete or not at all. If another process won the race, its
 * ID is used.
 */
async function createHostId(file: string): Promise<string> {
  const id = randomUUID();
  const tmp = `${file}.${process.pid}.${randomUUID()}.tmp`;
  await writeFile(tmp, `${id}\n`, { mode: 0o644 });
  try {
    await link(tmp, file);
    return id;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    return (await readHostId(file)) ?? id;
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

function resolveHostname(env: NodeJS.ProcessEnv): string {
  const hostname = (env.MY_HOSTNAME || os.hostname()).trim();
  if (!hostname) {
    throw invalidArgument('Failed to determine the hostname: set MY_HOSTNAME to a non-empty name');
  }
  return hostname;
}

function resolvePool(config: Config, env: NodeJS.ProcessEnv): string {
  const fromConfig = config.executor.pool;
  const fromEnv = env.MY_POOL ?? '';
  if (fromConfig && fromEnv) {
    throw invalidArgument(
      `Both executor.pool ("${fromConfig}") and MY_POOL ("${fromEnv}") are set: set only one`,
    );
  }
  return (fromConfig || fromEnv).toLowerCase();
}

/** Node's process.platform as Go's GOOS. */
export function goOs(platform: NodeJS.Platform | string): string {
  if (platform === 'win32') return 'windows';
  if (platform === 'sunos') return 'solaris';
  return platform;
}

/** Node's process.arch as Go's GOARCH. */
export function goArch(arch: NodeJS.Architecture | string): string {
  const names: Record<string, string> = { x64: 'amd64', ia32: '386', ppc64: 'ppc64le' };
  return names[arch] ?? arch;
}

/**
 * CPU to offer, in millicpu: executor.millicpu, else SYS_CPU ("1.5" cores or
 * "1500m"), else SYS_MILLICPU (deprecated; despite its name, in cores), else
 * every core.
 */
export function assignableMilliCpu(config: Config, env: NodeJS.ProcessEnv): number {
  if (config.executor.millicpu > 0) return config.executor.millicpu;
  if (env.SYS_CPU) return parseCpu('SYS_CPU', env.SYS_CPU);
  if (env.SYS_MILLICPU) return parseCpu('SYS_MILLICPU', env.SYS_MILLICPU, false);
  return os.availableParallelism() * 1000;
}

function parseCpu(name: string, text: string, allowMilli = true): number {
  const milli = allowMilli && text.trim().endsWith('m');
  const number = Number(milli ? text.trim().slice(0, -1) : text);
  const value = Math.round(milli ? number : number * 1000);
  if (text.trim() === '' || !Number.isFinite(number) || value <= 0) {
    const forms = allowMilli
      ? 'cores such as "1.5" or millicpu such as "1500m"'
      : 'cores such as "2"';
    throw invalidArgument(`Invalid ${name} "${text}": expected ${forms}`);
  }
  return value;
}

/** Memory to offer, in bytes: executor.memory_bytes, else SYS_MEMORY_BYTES, else total RAM. */
export function assignableMemoryBytes(config: Config, env: NodeJS.ProcessEnv): number {
  if (config.executor.memory_bytes > 0) return config.executor.memory_bytes;
  const text = env.SYS_MEMORY_BYTES;
  if (!text) return os.totalmem();
  const value = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw invalidArgument(`Invalid SYS_MEMORY_BYTES "${text}": expected a whole number of bytes`);
  }
  return value;
}

/** Best-effort human-readable OS name; never throws. */
async function osDisplayName(): Promise<string> {
  if (process.platform === 'linux') {
    const text = await readFile('/etc/os-release', 'utf8').catch(() => '');
    const pretty = /^PRETTY_NAME=(["']?)(.*)\1\s*$/m.exec(text)?.[2];
    return pretty || `Linux ${os.release()}`;
  }
  if (process.platform === 'darwin') return macOsName(os.release());
  if (process.platform === 'win32') return os.version();
  return `${os.type()} ${os.release()}`;
}

/** Maps a Darwin kernel release ("24.1.0") to its macOS version. */
export function macOsName(darwinRelease: string): string {
  const major = Number.parseInt(darwinRelease, 10);
  if (!Number.isFinite(major)) return 'macOS';
  if (major >= 25) return `macOS ${major + 1}`; // macOS 26 "Tahoe" follows 15
  if (major >= 20) return `macOS ${major - 9}`;
  return `macOS 10.${major - 4}`;
}

/** Idlebuild's version from package.json, three levels above this file in src and dist. */
export async function readVersion(): Promise<string> {
  const file = new URL('../../../package.json', import.meta.url);
  const pkg = JSON.parse(await readFile(file, 'utf8')) as { version?: unknown };
  if (typeof pkg.version !== 'string') throw failedPrecondition(`No version in ${file.pathname}`);
  return pkg.version;
}
