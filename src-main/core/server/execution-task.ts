import { randomUUID } from 'node:crypto';

import type { BlobDigest } from '../digest.js';
import type {
  Action__Output,
  Command__Output,
  Platform__Output,
  SchedulingMetadata,
  TaskSize,
} from '../proto/index.js';

/** BuildBuddy's default task size when the action estimates none (reference §7). */
export const DEFAULT_MILLI_CPU = 600;
export const DEFAULT_MEMORY_BYTES = 400e6;
/** BuildBuddy's minimal task size: smaller estimates are raised to it. */
export const MIN_MILLI_CPU = 250;
export const MIN_MEMORY_BYTES = 6e6;
/** One BuildBuddy compute unit. */
const BCU_MILLI_CPU = 1000;
const BCU_MEMORY_BYTES = 2.5e9;

/**
 * A new execution ID in BuildBuddy's form (reference §8), which is also the
 * task ID and the Operation name:
 * `{instance_name}/uploads/{uuid}/blobs/{hash}/{size}`. With an empty
 * instance name it starts with "/uploads/", as BuildBuddy's does.
 */
export function newExecutionId(instanceName: string, actionDigest: BlobDigest): string {
  return `${instanceName}/uploads/${randomUUID()}/blobs/${actionDigest.hash}/${actionDigest.size_bytes}`;
}

/**
 * A platform property's value by case-insensitive name, trimmed; the
 * Action's platform wins over the Command's, as in BuildBuddy.
 */
export function platformProperty(
  action: Action__Output,
  command: Command__Output,
  name: string,
): string | undefined {
  const platform: Platform__Output | null =
    (action.platform?.properties.length ?? 0) > 0 ? action.platform : command.platform;
  const wanted = name.toLowerCase();
  const found = platform?.properties.find((p) => p.name.toLowerCase() === wanted);
  return found?.value.trim();
}

/**
 * Where and how large the task is: OSFamily (lower-cased, default linux),
 * Arch (default amd64), Pool (lower-cased, "default" meaning none) and the
 * task size from EstimatedCPU / EstimatedMemory / EstimatedComputeUnits.
 */
export function schedulingMetadataFor(
  action: Action__Output,
  command: Command__Output,
  queuedAt: Date,
): SchedulingMetadata {
  const prop = (name: string) => platformProperty(action, command, name);
  const pool = (prop('Pool') ?? '').toLowerCase();
  return {
    task_size: taskSizeFor(prop),
    os: (prop('OSFamily') || 'linux').toLowerCase(),
    arch: prop('Arch') || 'amd64',
    pool: pool === 'default' ? '' : pool,
    task_group_id: 'ANON',
    queued_timestamp: timestampOf(queuedAt),
    requested_isolation_type: prop('workload-isolation-type') ?? '',
  };
}

/** The task size the action asks for, else the default, never below the minimum. */
export function taskSizeFor(prop: (name: string) => string | undefined): TaskSize {
  let milliCpu = DEFAULT_MILLI_CPU;
  let memory = DEFAULT_MEMORY_BYTES;
  const bcu = Number(prop('EstimatedComputeUnits'));
  if (Number.isFinite(bcu) && bcu > 0) {
    milliCpu = bcu * BCU_MILLI_CPU;
    memory = bcu * BCU_MEMORY_BYTES;
  }
  milliCpu = parseMilliCpu(prop('EstimatedCPU')) ?? milliCpu;
  memory = parseBytes(prop('EstimatedMemory')) ?? memory;
  return {
    estimated_milli_cpu: Math.max(MIN_MILLI_CPU, Math.round(milliCpu)),
    estimated_memory_bytes: Math.max(MIN_MEMORY_BYTES, Math.round(memory)),
  };
}

/** "2", "0.5" (cores) or "4000m" (milli-CPU); undefined when absent or invalid. */
export function parseMilliCpu(value: string | undefined): number | undefined {
  const match = /^(\d+(?:\.\d+)?|\.\d+)(m?)$/.exec(value?.trim() ?? '');
  if (!match) return undefined;
  return match[2] === 'm' ? Number(match[1]) : Number(match[1]) * 1000;
}

const BYTE_UNITS: Record<string, number> = {
  '': 1,
  k: 1e3,
  m: 1e6,
  g: 1e9,
  t: 1e12,
  p: 1e15,
  ki: 2 ** 10,
  mi: 2 ** 20,
  gi: 2 ** 30,
  ti: 2 ** 40,
  pi: 2 ** 50,
};

/**
 * Bytes or human units: "1000000", "1M", "2GB", "4.5GB" (decimal, as
 * BuildBuddy reads them) or "512MiB" (binary). Undefined when absent or
 * invalid.
 */
export function parseBytes(value: string | undefined): number | undefined {
  const match = /^(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]i?)?b?$/i.exec(value?.trim() ?? '');
  if (!match) return undefined;
  return Number(match[1]) * BYTE_UNITS[(match[2] ?? '').toLowerCase()];
}

export function timestampOf(date: Date): { seconds: number; nanos: number } {
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}
