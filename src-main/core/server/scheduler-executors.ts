import type { ExecutionNode__Output, SchedulingMetadata, TaskSize } from '../proto/index.js';

/**
 * A pool key as BuildBuddy matches them: OS family, architecture and pool
 * must be equal between an executor and a task. Pools are compared
 * lower-cased, with "default" meaning the unnamed pool.
 */
export interface PoolKey {
  os: string;
  arch: string;
  pool: string;
}

/** The unnamed pool's spellings, "" and "default", become "". */
export function normalizePool(pool: string | undefined): string {
  const lower = (pool ?? '').trim().toLowerCase();
  return lower === 'default' ? '' : lower;
}

export function nodePoolKey(node: ExecutionNode__Output): PoolKey {
  return { os: node.os_family, arch: node.arch, pool: normalizePool(node.pool) };
}

export function taskPoolKey(metadata: SchedulingMetadata): PoolKey {
  return {
    os: metadata.os ?? '',
    arch: metadata.arch ?? '',
    pool: normalizePool(metadata.pool),
  };
}

export function samePool(a: PoolKey, b: PoolKey): boolean {
  return a.os === b.os && a.arch === b.arch && a.pool === b.pool;
}

/**
 * True when a task of `size` fits an executor's assignable resources, the
 * same test BuildBuddy's scheduler applies (capacity, not current load).
 */
export function nodeFitsTask(node: ExecutionNode__Output, size: TaskSize): boolean {
  const memory = Number(size.estimated_memory_bytes ?? 0);
  const milliCpu = Number(size.estimated_milli_cpu ?? 0);
  if (memory > node.assignable_memory_bytes || milliCpu > node.assignable_milli_cpu) return false;
  for (const wanted of size.custom_resources ?? []) {
    const have = node.assignable_custom_resources.find((r) => r.name === wanted.name);
    if (Number(wanted.value ?? 0) > Number(have?.value ?? 0)) return false;
  }
  return true;
}

/**
 * How busy an executor looks, for choosing among those that fit: queued
 * and running tasks (as it reported them) plus reservations we sent since.
 */
export function nodeLoad(node: ExecutionNode__Output, heldReservations: number): number {
  return node.current_queue_length + node.active_action_count + heldReservations;
}
