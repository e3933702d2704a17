import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';

/**
 * One task's directory under the build root: the input root (`exec/`, where
 * the Command runs) and, beside it so that no action can overwrite them,
 * the files that capture stdout and stderr. The task pipeline creates it and
 * removes it once the result is published.
 */
export interface Workspace {
  root: string;
  /** The input root; the Command's working directory is relative to it. */
  inputRoot: string;
  stdoutPath: string;
  stderrPath: string;
}

/** Workspace directory names: 24 hex characters, nothing else in the build root. */
const WORKSPACE_NAME = /^[0-9a-f]{24}$/;

export async function createWorkspace(buildRoot: string): Promise<Workspace> {
  const root = join(buildRoot, randomBytes(12).toString('hex'));
  const inputRoot = join(root, 'exec');
  const stdio = join(root, 'stdio');
  await mkdir(inputRoot, { recursive: true });
  await mkdir(stdio);
  return {
    root,
    inputRoot,
    stdoutPath: join(stdio, 'stdout'),
    stderrPath: join(stdio, 'stderr'),
  };
}

/**
 * Removes workspaces left in the build root by an executor that was killed
 * before it could clean up. Only directories named like our workspaces are
 * touched, so a build root shared with other files loses nothing else.
 * Limitation: two executors must not share one build root.
 */
export async function removeStaleWorkspaces(buildRoot: string, logger: Logger): Promise<number> {
  const stale = (await readdir(buildRoot, { withFileTypes: true })).filter(
    (d) => d.isDirectory() && WORKSPACE_NAME.test(d.name),
  );
  await Promise.all(
    stale.map((d) => rm(join(buildRoot, d.name), { recursive: true, force: true })),
  );
  if (stale.length > 0) logger.info({ count: stale.length }, 'Removed stale workspaces');
  return stale.length;
}
