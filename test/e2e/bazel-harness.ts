import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CProject } from './c-project.js';

// Driving Bazel and `idlebuild solo` as child processes, shared by the
// end-to-end test and the benchmark (test/bench/bazel-bench.ts).

/** The repository root (this file compiles to dist/test/e2e/). */
export const repoRoot = new URL('../../../', import.meta.url).pathname;

export interface BazelRun {
  seconds: number;
  output: string;
}

export function bazelRunner(project: CProject, outputUserRoot: string) {
  const startup = [`--output_user_root=${outputUserRoot}`, '--nohome_rc', '--max_idle_secs=120'];
  return async (...args: string[]): Promise<BazelRun> => {
    const started = process.hrtime.bigint();
    const child = spawn('bazel', [...startup, ...args], {
      cwd: project.dir,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const [code] = await once(child, 'exit');
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    assert.equal(code, 0, `bazel ${args.join(' ')} failed:\n${output}`);
    return { seconds, output };
  };
}

/** Bazel's closing summary, e.g. "65 processes: 1 internal, 64 remote." */
export function processSummary(output: string): Map<string, number> {
  const line = [...output.matchAll(/INFO: \d+ process(?:es)?: (.*)\./g)].pop();
  assert.ok(line, `no process summary in Bazel output:\n${output}`);
  const counts = new Map<string, number>();
  for (const part of line[1].split(', ')) {
    const m = /^(\d+) (.*)$/.exec(part.trim());
    if (m) counts.set(m[2], Number(m[1]));
  }
  return counts;
}

export async function readOutputs(project: CProject): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  for (const rel of project.outputs)
    files.set(rel, await readFile(join(project.dir, 'bazel-bin', rel)));
  return files;
}

export async function startSolo(
  dataDir: string,
): Promise<{ child: ChildProcess; endpoint: string; log: () => string }> {
  const child = spawn(
    process.execPath,
    [join(repoRoot, 'bin/idlebuild.js'), 'solo', '--port', '0', '--data-dir', dataDir],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, IDLEBUILD_LOG_LEVEL: 'warn' },
    },
  );
  let out = '';
  child.stderr!.on('data', (d) => (out += d));
  const endpoint = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`solo mode did not start:\n${out}`)), 30_000);
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /grpc:\/\/127\.0\.0\.1:\d+/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[0]);
      }
    });
    child.on('exit', (code) => reject(new Error(`solo mode exited with ${code}:\n${out}`)));
  });
  return { child, endpoint, log: () => out };
}
