import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND } from './runner.js';

/** Where argv[0] of a Command resolved to, or why it cannot be started. */
export type ResolvedArgv0 = { path: string } | { exitCode: number; message: string };

/**
 * PATH used when the Command lists none. REAPI leaves this
 * implementation-defined; this is what execvp() falls back to. The executor's
 * own PATH is never used.
 */
export const DEFAULT_ACTION_PATH = '/usr/bin:/bin';

/**
 * Resolves argv[0] as REAPI v2.3 describes: an absolute path, a path relative
 * to the working directory (it contains '/'), or a bare name looked up on the
 * action's PATH. Failures carry a shell's exit code (127 not found, 126 not
 * executable) and a message for the Command's stderr.
 */
export async function resolveArgv0(
  argv0: string,
  workingDirectory: string,
  actionPath: string | undefined,
): Promise<ResolvedArgv0> {
  const fail = (exitCode: number, reason: string) => ({
    exitCode,
    message: `Failed to start command "${argv0}": ${reason}`,
  });
  if (argv0 === '') return fail(EXIT_NOT_FOUND, 'the command name is empty');
  if (argv0.includes('/')) {
    const path = resolve(workingDirectory, argv0);
    const problem = await checkExecutable(path);
    return problem ? fail(problem.exitCode, problem.reason) : { path };
  }

  // Search the action's PATH; remember a match that exists but cannot run.
  const pathVar = actionPath ?? DEFAULT_ACTION_PATH;
  let notExecutable: { exitCode: number; reason: string } | undefined;
  for (const dir of pathVar.split(':')) {
    const path = resolve(workingDirectory, dir, argv0);
    const problem = await checkExecutable(path);
    if (!problem) return { path };
    if (problem.exitCode === EXIT_NOT_EXECUTABLE) notExecutable ??= problem;
  }
  if (notExecutable) return fail(notExecutable.exitCode, notExecutable.reason);
  return fail(EXIT_NOT_FOUND, `not found on the action's PATH "${pathVar}"`);
}

async function checkExecutable(
  path: string,
): Promise<{ exitCode: number; reason: string } | undefined> {
  try {
    if ((await stat(path)).isDirectory())
      return { exitCode: EXIT_NOT_EXECUTABLE, reason: `"${path}" is a directory` };
  } catch {
    return { exitCode: EXIT_NOT_FOUND, reason: `"${path}" does not exist` };
  }
  try {
    await access(path, constants.X_OK);
    return undefined;
  } catch {
    return { exitCode: EXIT_NOT_EXECUTABLE, reason: `"${path}" is not executable` };
  }
}
