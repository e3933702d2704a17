import { spawn, type ChildProcess } from 'node:child_process';
import { appendFile, open, stat, type FileHandle } from 'node:fs/promises';
import { constants as osConstants, setPriority } from 'node:os';
import { failedPrecondition, internal, invalidArgument, messageOf } from '../errors.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';
import { resolveArgv0 } from './argv0.js';
import { sampleProcessTree, signalProcessGroup, signalProcessTree } from './proctree.js';
import {
  EXIT_NOT_EXECUTABLE,
  EXIT_NOT_FOUND,
  type PreparedRunner,
  type RunRequest,
  type RunResult,
  type Runner,
} from './runner.js';

/** The lowest scheduling priority: tasks only get CPU the machine's owner does not use. */
const LOWEST_PRIORITY = 19;
const SAMPLE_INTERVAL_MS = 500;

/**
 * The `none` isolation type (BuildBuddy's "bare" runner): the Command runs
 * directly on this machine as the executor's user, in its own process group
 * at the lowest OS priority, with exactly the Command's environment. Nothing
 * separates it from the machine beyond that, so it is for trusted builds.
 *
 * When the Command's leader process exits, whatever is left of its process
 * group is killed, so background processes do not outlive the action.
 *
 * Limitation: processes that leave the group (setsid) and outlive their parent
 * are not found once the leader exited; while the leader runs, timeouts and
 * aborts find them through /proc. Orphans are reaped by the machine's init
 * process; in a container, run the executor under an init (docker --init).
 */
export function createNoneRunner(opts: { logger?: Logger } = {}): Runner {
  const logger = moduleLogger(opts.logger ?? silentLogger, 'runner');
  const prepared: PreparedRunner = {
    run: (req) => runCommand(req, logger),
    dispose: async () => {},
  };
  return { isolation: 'none', prepare: async () => prepared };
}

async function runCommand(req: RunRequest, logger: Logger): Promise<RunResult> {
  await checkRequest(req);
  const env = Object.fromEntries(req.environment.map((v) => [v.name, v.value]));
  const [stdout, stderr] = await openStdio(req);
  const startTime = new Date();
  let finished: Promise<RunResult>;
  try {
    // Resolve argv[0] on the action's PATH; an unknown command is a result.
    const argv0 = await resolveArgv0(req.arguments[0], req.workingDirectory, env.PATH);
    if ('exitCode' in argv0) {
      await stderr.write(`${argv0.message}\n`);
      return notStarted(argv0.exitCode, startTime);
    }
    if (req.signal?.aborted) return { ...notStarted(128 + 9, startTime), aborted: true };

    // Start it in its own process group, writing straight into the files.
    // Supervision starts before the next await so that no exit is missed.
    const child = spawn(argv0.path, req.arguments.slice(1), {
      argv0: req.arguments[0],
      cwd: req.workingDirectory,
      env,
      stdio: ['ignore', stdout.fd, stderr.fd],
      detached: true,
    });
    lowerPriority(child);
    finished = supervise(child, req, startTime, logger);
  } catch (err) {
    return startFailed(req, err, startTime);
  } finally {
    await Promise.all([stdout.close(), stderr.close()]);
  }
  return finished;
}

async function checkRequest(req: RunRequest): Promise<void> {
  if (req.arguments.length === 0) throw invalidArgument('Command has no arguments');
  if (!(req.timeoutMs > 0)) throw invalidArgument(`Timeout "${req.timeoutMs}" ms is not positive`);
  if (req.arguments.some((a) => a.includes('\0')))
    throw invalidArgument('Command arguments must not contain NUL characters');
  for (const { name, value } of req.environment) {
    if (name === '' || name.includes('=') || name.includes('\0') || value.includes('\0'))
      throw invalidArgument(`Environment variable "${name}" is not a valid name=value pair`);
  }
  const isDir = await stat(req.workingDirectory).then(
    (s) => s.isDirectory(),
    () => false,
  );
  if (!isDir)
    throw failedPrecondition(`Working directory "${req.workingDirectory}" is not a directory`);
}

async function openStdio(req: RunRequest): Promise<[FileHandle, FileHandle]> {
  const stdout = await open(req.stdoutPath, 'w').catch((err) => {
    throw internal(`Failed to create stdout file "${req.stdoutPath}": ${messageOf(err)}`);
  });
  const stderr = await open(req.stderrPath, 'w').catch(async (err) => {
    await stdout.close();
    throw internal(`Failed to create stderr file "${req.stderrPath}": ${messageOf(err)}`);
  });
  return [stdout, stderr];
}

// Limitation: the priority is lowered right after spawn, so for an instant the
// Command runs at the executor's priority, and a child it forks in that
// instant keeps it.
function lowerPriority(child: ChildProcess): void {
  try {
    if (child.pid !== undefined) setPriority(child.pid, LOWEST_PRIORITY);
  } catch {
    // The process already exited, or the OS refused; it still runs.
  }
}

function notStarted(exitCode: number, startTime: Date): RunResult {
  return { exitCode, timedOut: false, aborted: false, startTime, endTime: new Date() };
}

/** A spawn that failed after argv[0] resolved (a race, ENOEXEC, …), reported like a shell. */
async function startFailed(req: RunRequest, err: unknown, startTime: Date): Promise<RunResult> {
  const code = (err as { code?: string }).code;
  const exitCode = code === 'ENOENT' ? EXIT_NOT_FOUND : EXIT_NOT_EXECUTABLE;
  const reason = (err as Error).message ?? String(err);
  const message = `Failed to start command "${req.arguments[0]}": ${reason}\n`;
  await appendFile(req.stderrPath, message).catch(() => {});
  return notStarted(exitCode, startTime);
}

/**
 * Waits for the Command's leader to exit, enforcing the timeout (SIGTERM,
 * then SIGKILL after the grace period) and the abort signal (SIGKILL at
 * once), sampling resource use meanwhile, and kills what is left of the
 * process group at the end.
 */
/**
 * Process groups of Commands still running. If the executor exits without
 * a clean shutdown (a second Ctrl-C, process.exit), the 'exit' hook kills
 * them, so no action outlives the executor that ran it.
 * Limitation: nothing can run on SIGKILL of the executor; the next start
 * removes the workspaces, but such processes run until they end.
 */
const livingGroups = new Set<number>();
process.on('exit', () => {
  for (const pgid of livingGroups) signalProcessGroup(pgid, 'SIGKILL');
});

function supervise(
  child: ChildProcess,
  req: RunRequest,
  startTime: Date,
  logger: Logger,
): Promise<RunResult> {
  return new Promise((resolve) => {
    const pgid = child.pid;
    if (pgid !== undefined) livingGroups.add(pgid);
    logger.debug({ pid: pgid, argv0: req.arguments[0] }, 'Command started');
    let timedOut = false;
    let aborted = false;
    let settled = false;
    let graceTimer: NodeJS.Timeout | undefined;
    const usage = pgid === undefined ? undefined : sampleUsage(pgid);
    const killTree = (signal: NodeJS.Signals) => {
      if (pgid !== undefined) void signalProcessTree(pgid, signal, () => !settled);
    };

    const timer = setTimeout(() => {
      timedOut = true;
      killTree('SIGTERM');
      graceTimer = setTimeout(() => killTree('SIGKILL'), req.terminationGraceMs);
    }, req.timeoutMs);
    const onAbort = () => {
      aborted = true;
      killTree('SIGKILL');
    };
    req.signal?.addEventListener('abort', onAbort, { once: true });

    const finish = (result: RunResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(graceTimer);
      req.signal?.removeEventListener('abort', onAbort);
      if (pgid !== undefined) {
        signalProcessGroup(pgid, 'SIGKILL');
        livingGroups.delete(pgid);
      }
      const { exitCode, signal } = result;
      logger.debug({ pid: pgid, exitCode, signal, timedOut, aborted }, 'Command finished');
      resolve({ ...result, timedOut, aborted, ...usage?.stop() });
    };
    child.once('error', (err) => {
      if (child.pid === undefined) void startFailed(req, err, startTime).then(finish);
    });
    child.once('exit', (code, signal) => {
      const signum = signal ? osConstants.signals[signal] : undefined;
      finish({
        exitCode: code ?? 128 + (signum ?? 0),
        ...(signal ? { signal } : {}),
        timedOut,
        aborted,
        startTime,
        endTime: new Date(),
      });
    });
  });
}

/** Samples the process tree every SAMPLE_INTERVAL_MS; stop() returns the totals seen. */
function sampleUsage(pgid: number): {
  stop(): { cpuNanos?: number; peakMemoryBytes?: number };
} {
  let cpuNanos: number | undefined;
  let peakMemoryBytes: number | undefined;
  let busy = false;
  const interval = setInterval(() => {
    if (busy) return;
    busy = true;
    void sampleProcessTree(pgid).then((s) => {
      busy = false;
      if (!s || stopped) return;
      cpuNanos = Math.max(cpuNanos ?? 0, s.cpuNanos);
      peakMemoryBytes = Math.max(peakMemoryBytes ?? 0, s.rssBytes);
    });
  }, SAMPLE_INTERVAL_MS);
  let stopped = false;
  return {
    stop() {
      stopped = true;
      clearInterval(interval);
      return {
        ...(cpuNanos !== undefined ? { cpuNanos } : {}),
        ...(peakMemoryBytes !== undefined ? { peakMemoryBytes } : {}),
      };
    },
  };
}
