import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import { parseDuration } from './duration.js';
import { GrpcError, invalidArgument, notFound, wrap } from './errors.js';

// Configuration of the executor: a BuildBuddy-compatible YAML file whose
// `executor:` block and top-level keys use BuildBuddy's names, so an existing
// BuildBuddy executor config works unchanged when it uses only the keys below.
// docs/config.md is the user-facing table of every key; keep it in step.

/** The isolation types Idlebuild can run actions in ("" = pick automatically). */
export const ISOLATION_TYPES = ['', 'none', 'sandbox', 'docker', 'podman'] as const;

/** BuildBuddy's value for server_type, which its health checks expect. */
export const DEFAULT_SERVER_TYPE = 'prod-buildbuddy-executor';

/** BuildBuddy's default container image for actions without `container-image`. */
export const DEFAULT_IMAGE = 'gcr.io/flame-public/executor-docker-default:enterprise-v1.6.0';

// Schemas of single values. Error wording is produced by describeIssue below;
// custom messages here must never quote the value of a secret.

const str = z.string();
const bool = z.boolean();
const count = z.number().int().min(0);
/** An HTTP port to listen on: 0 picks a free port, -1 turns the endpoint off. */
const port = z.number().int().min(-1).max(65535);
const nonEmptyPath = z.string().min(1);

const TARGET_SCHEMES = ['grpc', 'grpcs', 'unix'];

/** A gRPC target URL: grpc://, grpcs://, unix:// or host[:port] (→ grpcs). */
const target = z.string().superRefine((value, ctx) => {
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(value)?.[1];
  if (scheme !== undefined && !TARGET_SCHEMES.includes(scheme.toLowerCase())) {
    ctx.addIssue({
      code: 'custom',
      message:
        `unsupported scheme "${scheme}://"; use grpc://host:port, ` +
        'grpcs://host[:port] or unix:///path',
    });
  }
});

/** An action environment variable: NAME=VALUE, or NAME to inherit it. */
const envVarEntry = z.string().superRefine((value, ctx) => {
  if (!/^[A-Za-z_][A-Za-z0-9_]*(=|$)/.test(value)) {
    ctx.addIssue({ code: 'custom', message: 'expected NAME=VALUE or NAME' });
  }
});

/** A duration in Go syntax or seconds, parsed to milliseconds. */
function duration(min: { ms: number; inclusive: boolean }) {
  return z.unknown().transform((value, ctx) => {
    if (typeof value !== 'string' && typeof value !== 'number') {
      ctx.issues.push({
        code: 'custom',
        message: `expected a duration such as "60s" or "1m30s", got ${describe(value, false)}`,
        input: value,
      });
      return z.NEVER;
    }
    let ms: number;
    try {
      ms = parseDuration(value);
    } catch (err) {
      ctx.issues.push({ code: 'custom', message: (err as Error).message, input: value });
      return z.NEVER;
    }
    if (ms < min.ms || (!min.inclusive && ms === min.ms)) {
      const bound = min.inclusive ? 'at least' : 'greater than';
      ctx.issues.push({ code: 'custom', message: `must be ${bound} ${min.ms}ms`, input: value });
      return z.NEVER;
    }
    return ms;
  });
}
const positiveDuration = () => duration({ ms: 0, inclusive: false });
const nonNegativeDuration = () => duration({ ms: 0, inclusive: true });
const anyDuration = () => duration({ ms: -Infinity, inclusive: true });

/**
 * The `executor:` block. Durations are milliseconds once parsed. See
 * docs/config.md for the meaning and default of each key.
 */
const executorShape = {
  app_target: target,
  cache_target: target,
  api_key: str,
  pool: str,
  host_id: str,
  metadata_directory: str,
  root_directory: nonEmptyPath,
  local_cache_directory: nonEmptyPath,
  local_cache_size_bytes: count,
  disable_local_cache: bool,
  millicpu: count,
  memory_bytes: count,
  docker_socket: str,
  enable_podman: bool,
  enable_bare_runner: bool,
  enable_sandbox: bool,
  default_isolation_type: z.enum(ISOLATION_TYPES),
  default_image: str,
  docker_network: str,
  check_action_result_before_execution: bool,
  default_task_timeout: positiveDuration(),
  max_task_timeout: positiveDuration(),
  default_termination_grace_period: nonNegativeDuration(),
  max_termination_grace_period: nonNegativeDuration(),
  task_progress_publish_interval: positiveDuration(),
  region: str,
  grpc_client_type: str,
  enable_lease_reconnect: bool,
  extra_env_vars: z.array(envVarEntry),
  exclusive_task_scheduling: bool,
  excess_capacity_threshold: z.number().min(0).max(1),
  queue_trim_interval: anyDuration(),
  labels: z.record(z.string(), z.string()),
};

/** Top-level keys (BuildBuddy's non-`executor.*` flags). */
const topShape = {
  port,
  monitoring_port: port,
  listen: z.string().min(1),
  max_shutdown_duration: nonNegativeDuration(),
  server_type: z.string().min(1),
};

type Output<Shape extends Record<string, z.ZodType>> = { [K in keyof Shape]: z.output<Shape[K]> };

/** The `executor:` block, with every default filled in. */
export type ExecutorConfig = Output<typeof executorShape>;

/** The whole configuration, with every default filled in. Durations are milliseconds. */
export type Config = Output<typeof topShape> & { executor: ExecutorConfig };

const fileSchema = z
  .strictObject({ ...topShape, executor: z.strictObject(executorShape).partial() })
  .partial();

/** Every supported key as a dotted path, e.g. "executor.millicpu". */
export const CONFIG_KEYS: readonly string[] = [
  ...Object.keys(topShape),
  ...Object.keys(executorShape).map((k) => `executor.${k}`),
];

/** Keys whose values are never quoted in errors (they may hold credentials). */
const SECRET_KEYS = new Set([
  'executor.api_key',
  'executor.app_target',
  'executor.cache_target',
  'executor.extra_env_vars',
]);

/**
 * BuildBuddy keys that Idlebuild knows but does not implement. Naming them
 * gives a better error than "unknown key" to someone reusing a BuildBuddy
 * config.
 */
const UNSUPPORTED_BUILDBUDDY_KEYS = new Set([
  ...[
    'cache_target_traffic_percent',
    'xcode_simulator_runtimes',
    'proactive_cancellation_enabled',
    'custom_resources',
    'disk_bytes',
    'disk_capacity_ratio',
    'gpu_memory_bytes',
    'mmap_memory_bytes',
    'round_task_cpu_size',
    'shutdown_cleanup_duration',
    'host_root_directory',
    'delete_filecache_on_startup',
    'delete_build_root_on_startup',
    'local_cache_always_clone',
    'include_subdir_prefix',
    'subdir_prefix_length',
    'enable_fastcopy_reflinking',
    'delete_parallelism',
    'maximum_disk_fullness',
    'workspace',
    'enable_vfs',
    'enable_oci',
    'enable_firecracker',
    'docker_net_host',
    'docker_mount_mode',
    'docker_inherit_user_ids',
    'docker_sibling_containers',
    'docker_volumes',
    'docker_devices',
    'docker_gpus',
    'podman',
    'oci',
    'container_registries',
    'container_registry_mirrors',
    'container_registry_region',
    'image_pull_timeout',
    'resolve_image_digests',
    'warmup_timeout_secs',
    'warmup_additional_images',
    'warmup_workflow_images',
    'startup_warmup_max_wait_secs',
    'forced_network_isolation_type',
    'cpu_leaser',
    'child_cgroups_enabled',
    'slow_task_threshold',
    'record_usage_timelines',
    'runner_pool',
    'affinity_routing_enabled',
    'startup_commands',
  ].map((k) => `executor.${k}`),
  'app',
  'cache',
  'grpc_client',
  'grpc_client_origin_header',
  'monitoring',
  'shutdown_lameduck_duration',
  'max_unready_duration',
]);

/**
 * Idlebuild's per-user data directory, under which the default build root,
 * file cache and metadata live: $IDLEBUILD_HOME if set, else
 * ~/.cache/idlebuild (or $XDG_CACHE_HOME/idlebuild) on Linux and other Unixes,
 * ~/Library/Caches/idlebuild on macOS, %LOCALAPPDATA%\idlebuild on Windows.
 */
export function dataDirectory(
  env: NodeJS.ProcessEnv = process.env,
  platform: NodeJS.Platform = process.platform,
): string {
  const p = platform === 'win32' ? path.win32 : path.posix;
  if (env.IDLEBUILD_HOME) return p.resolve(env.IDLEBUILD_HOME);
  const home = userHome(env, platform);
  if (platform === 'win32')
    return p.join(env.LOCALAPPDATA || p.join(home, 'AppData', 'Local'), 'idlebuild');
  if (platform === 'darwin') return p.join(home, 'Library', 'Caches', 'idlebuild');
  const xdg = env.XDG_CACHE_HOME && p.isAbsolute(env.XDG_CACHE_HOME) ? env.XDG_CACHE_HOME : '';
  return p.join(xdg || p.join(home, '.cache'), 'idlebuild');
}

function userHome(env: NodeJS.ProcessEnv, platform: NodeJS.Platform): string {
  return (platform === 'win32' ? env.USERPROFILE : env.HOME) || homedir();
}

/** The configuration used when no file is given: every key at its default. */
export function defaultConfig(
  env: NodeJS.ProcessEnv = process.env,
  platform: NodeJS.Platform = process.platform,
): Config {
  const p = platform === 'win32' ? path.win32 : path.posix;
  const data = dataDirectory(env, platform);
  return {
    port: 8080,
    monitoring_port: 9090,
    listen: '127.0.0.1',
    max_shutdown_duration: 25_000,
    server_type: DEFAULT_SERVER_TYPE,
    executor: {
      app_target: '',
      cache_target: '',
      api_key: '',
      pool: '',
      host_id: '',
      metadata_directory: '',
      root_directory: p.join(data, 'remote_build'),
      local_cache_directory: p.join(data, 'filecache'),
      local_cache_size_bytes: 1_000_000_000,
      disable_local_cache: false,
      millicpu: 0,
      memory_bytes: 0,
      docker_socket: '',
      enable_podman: false,
      enable_bare_runner: false,
      enable_sandbox: false,
      default_isolation_type: '',
      default_image: DEFAULT_IMAGE,
      docker_network: '',
      check_action_result_before_execution: true,
      default_task_timeout: 8 * 3_600_000,
      max_task_timeout: 24 * 3_600_000,
      default_termination_grace_period: 0,
      max_termination_grace_period: 60_000,
      task_progress_publish_interval: 60_000,
      region: '',
      grpc_client_type: 'executor',
      enable_lease_reconnect: true,
      extra_env_vars: [],
      exclusive_task_scheduling: false,
      excess_capacity_threshold: 0.4,
      queue_trim_interval: 15_000,
      labels: {},
    },
  };
}

/**
 * Reads and parses a config file. A missing file is NOT_FOUND; every problem
 * in the file is INVALID_ARGUMENT with a message naming the file and key.
 */
export async function loadConfigFile(
  file: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw notFound(`Config file "${file}" not found: create it, or start without a config file`);
    }
    throw wrap(err, `Failed to read config file "${file}"`);
  }
  return parseConfig(text, env, file);
}

/**
 * Parses config YAML: expands ${NAME} from env, validates every key, and
 * fills in defaults. sourceName (usually the file path) prefixes errors.
 */
export function parseConfig(text: string, env: NodeJS.ProcessEnv, sourceName: string): Config {
  const fail = (problems: string[]) =>
    invalidArgument(`Invalid config ${sourceName}: ${problems.join('; ')}`);

  // Expand environment variables in the text, as BuildBuddy does.
  const expanded = expandEnv(text, env);
  if (expanded.problems.length > 0) throw fail(expanded.problems);

  // Parse YAML and drop keys with no value, which mean "use the default".
  const raw = dropNulls(parseYaml(expanded.text, fail));

  // Validate every key against the schema.
  const result = fileSchema.safeParse(raw);
  if (!result.success) throw fail(result.error.issues.flatMap((i) => describeIssue(i, raw)));

  // Merge over the defaults and make paths absolute.
  const defaults = defaultConfig(env);
  const { executor, ...top } = result.data;
  const config: Config = { ...defaults, ...top, executor: { ...defaults.executor, ...executor } };
  for (const key of ['root_directory', 'local_cache_directory', 'metadata_directory'] as const) {
    config.executor[key] = resolvePath(config.executor[key], env);
  }
  return config;
}

/**
 * A copy safe to print or log: the API key, credentials in target URLs and
 * the values of extra_env_vars are replaced by "[redacted]".
 */
export function redactConfig(config: Config): Config {
  const copy = structuredClone(config);
  const e = copy.executor;
  if (e.api_key) e.api_key = '[redacted]';
  e.app_target = redactTarget(e.app_target);
  e.cache_target = redactTarget(e.cache_target);
  e.extra_env_vars = e.extra_env_vars.map((v) => v.replace(/=.*$/s, '=[redacted]'));
  return copy;
}

/**
 * A target URL safe to print: userinfo ("user:password@"), with or without
 * a scheme, becomes "[redacted]@".
 */
export function redactTarget(target: string): string {
  return target.replace(/^((?:[A-Za-z][A-Za-z0-9+.-]*:\/\/)?)[^@/]*@/, '$1[redacted]@');
}

/**
 * Replaces ${NAME} and $NAME with the variable's value, like BuildBuddy's
 * os.ExpandEnv. Unlike BuildBuddy, an unset variable is an error rather than
 * an empty string (a variable set to "" expands to nothing), full-line
 * comments are left alone, and ${SECRET:name} is rejected: Idlebuild has no
 * secret provider.
 */
function expandEnv(text: string, env: NodeJS.ProcessEnv): { text: string; problems: string[] } {
  const problems: string[] = [];
  const lines = text.split('\n').map((line, i) => {
    if (/^\s*#/.test(line)) return line;
    return line.replace(/\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g, (whole, braced, bare) => {
      const name: string = braced ?? bare;
      const where = `line ${i + 1}`;
      if (name.startsWith('SECRET:')) {
        problems.push(
          `${where}: "${whole}" is not supported (Idlebuild has no secret provider); ` +
            'put the secret in an environment variable and use ${NAME}',
        );
      } else if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
        problems.push(`${where}: "${whole}" is not a valid placeholder; use \${NAME}`);
      } else if (env[name] === undefined) {
        problems.push(
          `${where}: environment variable "${name}" is not set; set it ` +
            '(to an empty string if it should expand to nothing)',
        );
      } else {
        return env[name];
      }
      return whole;
    });
  });
  return { text: lines.join('\n'), problems };
}

/** Parses YAML into a plain object; syntax errors name the line, never quote it. */
function parseYaml(text: string, fail: (problems: string[]) => GrpcError): Record<string, unknown> {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true, lineCounter });
  if (doc.errors.length > 0) {
    throw fail(
      doc.errors.map(
        (e) => `YAML error at line ${lineCounter.linePos(e.pos[0]).line}: ${e.message}`,
      ),
    );
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw fail([`YAML error: ${(err as Error).message}`]);
  }
  if (value === null || value === undefined) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw fail([`expected a map of settings at the top level, got ${describe(value, true)}`]);
  }
  return value as Record<string, unknown>;
}

/** Removes null values at the top level and in the executor block. */
function dropNulls(raw: Record<string, unknown>): Record<string, unknown> {
  const strip = (o: Record<string, unknown>) =>
    Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null));
  const out = strip(raw);
  const executor = out.executor;
  if (executor && typeof executor === 'object' && !Array.isArray(executor)) {
    out.executor = strip(executor as Record<string, unknown>);
  }
  return out;
}

/** Expands a leading "~" and makes a path absolute (against the working directory). */
function resolvePath(value: string, env: NodeJS.ProcessEnv): string {
  if (value === '') return value;
  if (value === '~' || value.startsWith('~/') || value.startsWith('~\\')) {
    value = path.join(userHome(env, process.platform), value.slice(1));
  }
  return path.resolve(value);
}

/** One zod issue as user-facing problems ("executor.millicpu: expected …"). */
function describeIssue(issue: z.core.$ZodIssue, raw: unknown): string[] {
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => describeUnknownKey([...issue.path, key].join('.')));
  }
  const key = formatPath(issue.path);
  const secret = SECRET_KEYS.has(key.replace(/\[\d+\]$/, ''));
  const value = valueAt(raw, issue.path);
  return [`${key}: ${describeProblem(issue, value, secret)}`];
}

function describeUnknownKey(key: string): string {
  if (UNSUPPORTED_BUILDBUDDY_KEYS.has(key)) {
    return `"${key}" is a BuildBuddy setting that Idlebuild does not support; remove it`;
  }
  const guess = suggestKey(key);
  if (guess) return `unknown config key "${key}" (did you mean "${guess}"?)`;
  return `unknown config key "${key}"; remove it (docs/config.md lists every key)`;
}

function describeProblem(issue: z.core.$ZodIssue, value: unknown, secret: boolean): string {
  const got = describe(value, secret);
  switch (issue.code) {
    case 'invalid_type': {
      const hint = issue.expected === 'string' && value !== undefined ? ' (quote it)' : '';
      return `expected ${EXPECTED[issue.expected] ?? issue.expected}, got ${got}${hint}`;
    }
    case 'too_small':
      if (issue.origin === 'string') return 'must not be empty';
      return `must be ${issue.inclusive ? 'at least' : 'greater than'} ${issue.minimum}, got ${got}`;
    case 'too_big':
      return `must be ${issue.inclusive ? 'at most' : 'less than'} ${issue.maximum}, got ${got}`;
    case 'invalid_value': {
      const options = issue.values.map((v) => JSON.stringify(v)).join(', ');
      return `expected one of ${options}, got ${got}`;
    }
    default:
      return issue.message;
  }
}

const EXPECTED: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  int: 'a whole number',
  boolean: 'true or false',
  object: 'a map',
  record: 'a map',
  array: 'a list',
};

/** Describes a value for an error message; secrets are described by type only. */
function describe(value: unknown, secret: boolean): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a map';
  if (secret) return `a ${typeof value}`;
  if (typeof value === 'string') {
    return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  }
  return String(value);
}

function formatPath(segments: readonly PropertyKey[]): string {
  return segments
    .map((s, i) => (typeof s === 'number' ? `[${s}]` : `${i > 0 ? '.' : ''}${String(s)}`))
    .join('');
}

function valueAt(root: unknown, segments: readonly PropertyKey[]): unknown {
  let v = root;
  for (const s of segments) v = (v as Record<PropertyKey, unknown> | undefined)?.[s];
  return v;
}

/** The supported key closest to an unknown one, if any is close enough. */
function suggestKey(key: string): string | undefined {
  const leaf = key.slice(key.lastIndexOf('.') + 1);
  const sameLeaf = CONFIG_KEYS.find((k) => k.slice(k.lastIndexOf('.') + 1) === leaf);
  if (sameLeaf) return sameLeaf;
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(leaf.length / 3)) + 1;
  for (const candidate of [...CONFIG_KEYS, 'executor']) {
    const d = editDistance(key, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1);
      row.push(Math.min(prev[j] + 1, row[j - 1] + 1, substitution));
    }
    prev = row;
  }
  return prev[b.length];
}
