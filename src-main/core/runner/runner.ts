/**
 * The runner seam: how a Command runs once its input root is in place.
 *
 * A Runner stands for one isolation type (`none`, `sandbox`, `docker`,
 * `podman`). For each task the executor calls prepare() with the task's
 * workspace and platform properties, runs the Command with the returned
 * PreparedRunner, and disposes of it when the task is done (or keeps it for
 * the next task when runners are recycled).
 *
 * Results follow REAPI: a Command that runs and fails is a result, not an
 * error. That includes a Command that cannot be started at all, as a shell
 * would report it:
 *   - argv[0] not found (ENOENT) → exit code 127,
 *   - argv[0] found but not executable (EACCES, ENOEXEC, a directory) → 126,
 * each with `Failed to start command "<argv0>": <reason>` written to the
 * stderr file, so the client sees why in its build output. run() throws a
 * GrpcError only for problems of the executor or the request itself (empty
 * arguments, a missing working directory, stdio files that cannot be
 * created).
 */

export type IsolationType = 'none' | 'sandbox' | 'docker' | 'podman';

/** Everything needed to run one Command, with paths already resolved. */
export interface RunRequest {
  /**
   * Command.arguments. argv[0] is absolute, relative to workingDirectory
   * (contains '/'), or a bare name looked up on the action's PATH.
   */
  arguments: string[];
  /** Exactly the Command's environment variables; nothing is inherited from the executor. */
  environment: { name: string; value: string }[];
  /** Absolute path of the directory the Command runs in. */
  workingDirectory: string;
  /** Time the Command may run before it is stopped; > 0. */
  timeoutMs: number;
  /** SIGTERM at the timeout, SIGKILL of the whole process tree at timeout + grace. */
  terminationGraceMs: number;
  /** Files the runner creates and streams stdout/stderr into (outside the input root). */
  stdoutPath: string;
  stderrPath: string;
  /** Abort kills the whole process tree at once (lease lost, pause, shutdown). */
  signal?: AbortSignal;
}

export interface RunResult {
  /** The exit code; for a process terminated by a signal, 128 + the signal number. */
  exitCode: number;
  /** The terminating signal's name, e.g. 'SIGKILL', when killed by a signal. */
  signal?: string;
  timedOut: boolean;
  aborted: boolean;
  startTime: Date;
  endTime: Date;
  /** Best effort, sampled while the Command runs; omitted where unknown. */
  cpuNanos?: number;
  peakMemoryBytes?: number;
}

/** A runner bound to one workspace; run() may be called once per task. */
export interface PreparedRunner {
  /** Resolves once the process tree has exited and the stdio files are closed. */
  run(req: RunRequest): Promise<RunResult>;
  /** Releases what prepare() set up (containers, mounts); the workspace stays. */
  dispose(): Promise<void>;
}

/**
 * One isolation type. prepare() gets the task's workspace and platform
 * properties (lower-cased names) and returns something that can run the
 * Command there.
 */
export interface Runner {
  readonly isolation: IsolationType;
  prepare(workspace: { rootDir: string }, platform: Map<string, string>): Promise<PreparedRunner>;
}

/** Exit codes a shell uses for a command it cannot start. */
export const EXIT_NOT_FOUND = 127;
export const EXIT_NOT_EXECUTABLE = 126;
