// Validation of the names and paths that arrive in Directories and Commands,
// and the containment check used before every write into a workspace. The
// check functions return a short description of the problem (or undefined
// when the value is fine), so callers can name the offending path in their
// own error.
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { internal } from './errors.js';

/**
 * The problem with a Directory entry name, if any: REAPI names are single,
 * non-empty path segments.
 */
export function nameProblem(name: string): string | undefined {
  if (name === '') return 'name is empty';
  if (name === '.' || name === '..') return `name is "${name}"`;
  if (name.includes('/')) return 'name contains "/"';
  if (name.includes('\0')) return 'name contains a NUL character';
  return undefined;
}

/**
 * Orders names as REAPI does: by code point, i.e. by their UTF-8 bytes
 * (JavaScript's default sort compares UTF-16 units, which differs for
 * characters outside the Basic Multilingual Plane).
 */
export function compareNames(a: string, b: string): number {
  if (a === b) return 0;
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/**
 * The problem with a relative, '/'-separated path such as an output path or
 * working directory: empty (unless allowed), absolute, a trailing '/', or a
 * segment that is empty, '.', '..' or holds a NUL.
 */
export function relativePathProblem(
  path: string,
  opts: { allowEmpty?: boolean } = {},
): string | undefined {
  if (path === '') return opts.allowEmpty ? undefined : 'path is empty';
  if (path.startsWith('/')) return 'path is absolute';
  if (path.endsWith('/')) return 'path ends with "/"';
  for (const segment of path.split('/')) {
    if (segment === '..') return 'path contains ".."';
    if (segment === '' || segment === '.') return 'path is not canonical';
    if (segment.includes('\0')) return 'path contains a NUL character';
  }
  return undefined;
}

/**
 * The problem with a SymlinkNode target found in the directory at
 * `dirSegments` below the input root: empty, absolute, holding a NUL, or
 * leaving the input root when resolved lexically from the link's directory.
 *
 * Limitation: the check is lexical. A target that passes through another
 * symlink of the tree (`up/../x` where `up` → `..`) can still point outside
 * the input root. The executor never writes through symlinks and output
 * collection checks real paths, so this only widens what the action itself
 * can read, which the runner bounds.
 */
export function symlinkTargetProblem(dirSegments: string[], target: string): string | undefined {
  if (target === '') return 'symlink target is empty';
  if (target.includes('\0')) return 'symlink target contains a NUL character';
  if (target.startsWith('/')) return `symlink target "${target}" is absolute`;
  let depth = dirSegments.length;
  for (const segment of target.split('/')) {
    if (segment === '' || segment === '.') continue;
    depth += segment === '..' ? -1 : 1;
    if (depth < 0) return `symlink target "${target}" leaves the input root`;
  }
  return undefined;
}

/** True when `path` is `root` or lies below it (both resolved, lexically). */
export function isInside(root: string, path: string): boolean {
  const rel = relative(resolve(root), resolve(path));
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

/**
 * Joins '/'-separated `relPath` onto `root` and asserts the result lies
 * inside root: the last guard before a write. Callers validate paths first,
 * so a failure here is an INTERNAL error.
 */
export function pathInside(root: string, relPath: string): string {
  const path = resolve(root, ...relPath.split('/'));
  if (!isInside(root, path))
    throw internal(`Refusing to write "${relPath}": it resolves outside "${root}"`);
  return path;
}

/** Display form of a directory path relative to the input root. */
export function describeDir(dirPath: string): string {
  return dirPath === '' ? 'the input root directory' : `directory "${dirPath}"`;
}
