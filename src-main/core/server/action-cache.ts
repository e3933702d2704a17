import { randomUUID } from 'node:crypto';
import { mkdir, readdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ActionCacheStore } from '../cas/types.js';
import { checkDigest, digestKey, type BlobDigest } from '../digest.js';
import { wrap } from '../errors.js';
import { moduleLogger, silentLogger, type Logger } from '../log.js';
import { decode, encode, type ActionResult, type ActionResult__Output } from '../proto/index.js';

const ACTION_RESULT = 'build.bazel.remote.execution.v2.ActionResult';
const TEMP_SUFFIX = '.tmp';

/**
 * Opens (creating if needed) the embedded server's Action Cache under
 * `directory`: one encoded ActionResult per action digest, in the file
 * `<directory>/ac/<hash>-<size>`. Writes go to a temporary file beside it and
 * are renamed into place, so a reader sees the old entry or the new one,
 * never a torn write; temporary files left by a crash are removed at startup.
 * The last write for an action digest wins.
 *
 * Limitation: nothing is ever evicted; the data directory grows until the
 * user deletes it.
 */
export async function createActionCacheStore(opts: {
  directory: string;
  logger?: Logger;
}): Promise<ActionCacheStore> {
  const log = moduleLogger(opts.logger ?? silentLogger, 'actioncache');
  const acDir = join(opts.directory, 'ac');
  try {
    await mkdir(acDir, { recursive: true });
    const leftovers = (await readdir(acDir)).filter((n) => n.endsWith(TEMP_SUFFIX));
    await Promise.all(leftovers.map((n) => unlink(join(acDir, n)).catch(() => undefined)));
  } catch (err) {
    throw wrap(err, `Failed to prepare the Action Cache directory "${acDir}"`);
  }
  return new DiskActionCache(acDir, log);
}

class DiskActionCache implements ActionCacheStore {
  constructor(
    private readonly acDir: string,
    private readonly log: Logger,
  ) {}

  async get(actionDigest: BlobDigest): Promise<ActionResult__Output | undefined> {
    const digest = checkDigest(actionDigest);
    let bytes: Buffer;
    try {
      bytes = await readFile(this.entryPath(digest));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw wrap(err, `Failed to read the Action Cache entry for "${digestKey(digest)}"`);
    }
    try {
      return decode(ACTION_RESULT, bytes);
    } catch (err) {
      // A corrupt entry is a cache miss: the client runs the action again
      // and its new result overwrites this one.
      this.log.error({ action: digestKey(digest), err }, 'Action Cache entry is corrupt');
      return undefined;
    }
  }

  async put(actionDigest: BlobDigest, result: ActionResult): Promise<void> {
    const digest = checkDigest(actionDigest);
    const path = this.entryPath(digest);
    const temp = `${path}.${randomUUID()}${TEMP_SUFFIX}`;
    try {
      await writeFile(temp, encode(ACTION_RESULT, result));
      await rename(temp, path);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw wrap(err, `Failed to store the Action Cache entry for "${digestKey(digest)}"`);
    }
  }

  private entryPath(d: BlobDigest): string {
    return join(this.acDir, `${d.hash}-${d.size_bytes}`);
  }
}
