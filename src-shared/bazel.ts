/**
 * The Bazel flags that send a build to an Idlebuild endpoint, shared by the
 * CLI banner and (later) the UI so both always say the same thing.
 */
export function bazelFlags(endpoint: string): string[] {
  return [`--remote_executor=${endpoint}`];
}

/** The flags that make Bazel fail instead of quietly building locally. */
export const STRICT_REMOTE_FLAGS = ['--spawn_strategy=remote', '--remote_local_fallback=false'];

/** A one-line example command for the given endpoint. */
export function bazelCommand(endpoint: string, targets = '//...'): string {
  return ['bazel', 'build', ...bazelFlags(endpoint), targets].join(' ');
}
