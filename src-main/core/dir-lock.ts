import { unlinkSync } from 'node:fs';
import { open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { failedPrecondition, wrap } from './errors.js';

/** A held directory lock; release() is idempotent. */
export interface DirectoryLock {
  release(): Promise<void>;
}

const LOCK_NAME = '.idlebuild.lock';

/**
 * Claims a directory for this process, so that two Idlebuild processes never
 * share a build root, file cache or server data directory (each cleans up
 * what it finds there at startup). The lock is a file holding our PID,
 * created exclusively; a lock whose process is gone is taken over. It is
 * released on release() and, as a last resort, when the process exits.
 * Limitation: a PID reused by an unrelated process keeps a stale lock held;
 * delete the lock file by hand then.
 */
export async function lockDirectory(dir: string, what: string): Promise<DirectoryLock> {
  const path = join(dir, LOCK_NAME);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(path, 'wx');
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return heldLock(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw wrap(err, `Failed to lock the ${what} "${dir}"`);
      }
    }
    const holder = Number((await readFile(path, 'utf8').catch(() => '')).trim());
    // Two roles of one process may share a directory (e.g. build root and
    // file cache set to the same path): the first lock covers both.
    if (holder === process.pid) return { release: async () => undefined };
    if (holder > 0 && isAlive(holder)) {
      throw failedPrecondition(
        `The ${what} "${dir}" is in use by another Idlebuild process (pid ${holder}): stop it, ` +
          'or give this one its own directories (--data-dir, or executor.root_directory and ' +
          'executor.local_cache_directory in --config)',
      );
    }
    await unlink(path).catch(() => undefined);
  }
  throw failedPrecondition(`Failed to lock the ${what} "${dir}": another process keeps taking it`);
}

function heldLock(path: string): DirectoryLock {
  let held = true;
  const onExit = () => {
    if (!held) return;
    try {
      // Synchronous on purpose: 'exit' handlers cannot wait.
      unlinkSync(path);
    } catch {
      // Already gone.
    }
  };
  process.on('exit', onExit);
  return {
    async release() {
      if (!held) return;
      held = false;
      process.off('exit', onExit);
      await unlink(path).catch(() => undefined);
    },
  };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** For .catch(): releases locks taken so far, then rethrows. */
export function releasing(locks: DirectoryLock[]): (err: unknown) => Promise<never> {
  return async (err) => {
    await Promise.all(locks.map((l) => l.release()));
    throw err;
  };
}
