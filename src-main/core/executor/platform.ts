import { parseDuration } from '../duration.js';
import { invalidArgument } from '../errors.js';
import type { ExecutionTask__Output, Platform__Output } from '../proto/index.js';

/**
 * A task's platform properties as BuildBuddy's executor reads them: names
 * lower-cased, values trimmed; Action.platform when it has properties, else
 * Command.platform; ExecutionTask.platform_overrides (from Bazel's
 * `x-buildbuddy-platform.*` headers) win over both.
 */
export function taskPlatform(task: ExecutionTask__Output): Map<string, string> {
  const base = task.action?.platform?.properties.length
    ? task.action.platform
    : task.command?.platform;
  const properties = new Map<string, string>();
  for (const platform of [base, task.platform_overrides]) addProperties(properties, platform);
  return properties;
}

function addProperties(into: Map<string, string>, platform: Platform__Output | null | undefined) {
  for (const p of platform?.properties ?? []) into.set(p.name.toLowerCase(), p.value.trim());
}

/** Property names the executor honours, lower-cased. */
export const PROPERTY = {
  pool: 'pool',
  osFamily: 'osfamily',
  arch: 'arch',
  isolationType: 'workload-isolation-type',
  containerImage: 'container-image',
  defaultTimeout: 'default-timeout',
  terminationGracePeriod: 'termination-grace-period',
  retry: 'retry',
  githubActionsRunnerLabels: 'github-actions-runner-labels',
  estimatedCpu: 'estimatedcpu',
  estimatedMemory: 'estimatedmemory',
} as const;

/** A boolean property: true only for "true" (any case); `fallback` when absent. */
export function boolProperty(platform: Map<string, string>, name: string, fallback: boolean) {
  const value = platform.get(name);
  return value === undefined || value === '' ? fallback : value.toLowerCase() === 'true';
}

/** A duration property in Go syntax ("90s", "15m"), in ms; undefined when absent. */
export function durationProperty(platform: Map<string, string>, name: string): number | undefined {
  const value = platform.get(name);
  if (value === undefined || value === '') return undefined;
  try {
    return parseDuration(value);
  } catch {
    throw invalidArgument(
      `Platform property "${name}" has an invalid duration "${value}": use Go syntax such as "90s"`,
    );
  }
}

/** `EstimatedCPU`: cores ("2", "0.5") or millicpu ("4000m"), as milliCPU. */
export function parseMilliCpu(text: string): number {
  const value = text.trim();
  const milli = value.endsWith('m');
  const number = Number(milli ? value.slice(0, -1) : value);
  if (value === '' || !Number.isFinite(number) || number < 0)
    throw invalidArgument(`Invalid EstimatedCPU "${text}": use cores such as "2" or "4000m"`);
  return Math.round(milli ? number : number * 1000);
}

const MEMORY_UNITS: Record<string, number> = {
  '': 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
};

/**
 * `EstimatedMemory`: bytes or binary units, case-insensitive, with an
 * optional "b"/"ib" suffix ("1M", "2GB", "4.5GiB"), as Docker's RAMInBytes.
 */
export function parseMemoryBytes(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!match)
    throw invalidArgument(`Invalid EstimatedMemory "${text}": use bytes or units such as "2GB"`);
  return Math.round(Number(match[1]) * MEMORY_UNITS[match[2].toLowerCase()]);
}
