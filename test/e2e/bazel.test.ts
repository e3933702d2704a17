import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { writeCProject, type CProject } from './c-project.js';

// End to end: Debian's Bazel builds a generated C project locally, then
// remotely through `idlebuild solo`, then again after `bazel clean` from the
// remote cache. Needs `bazel` (Debian's bazel-bootstrap) and gcc on PATH; set
// IDLEBUILD_SKIP_BAZEL=1 to skip on a machine without them (CI never does).

const repoRoot = new URL('../../../', import.meta.url).pathname;
const MODULES = 60;
const JOBS = 4;
const skip = process.env.IDLEBUILD_SKIP_BAZEL === '1' ? 'IDLEBUILD_SKIP_BAZEL=1' : false;

interface BazelRun {
  seconds: number;
  output: string;
}

function bazelRunner(project: CProject, outputUserRoot: string) {
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
function processSummary(output: string): Map<string, number> {
  const line = [...output.matchAll(/INFO: \d+ process(?:es)?: (.*)\./g)].pop();
  assert.ok(line, `no process summary in Bazel output:\n${output}`);
  const counts = new Map<string, number>();
  for (const part of line[1].split(', ')) {
    const m = /^(\d+) (.*)$/.exec(part.trim());
    if (m) counts.set(m[2], Number(m[1]));
  }
  return counts;
}

async function readOutputs(project: CProject): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  for (const rel of project.outputs)
    files.set(rel, await readFile(join(project.dir, 'bazel-bin', rel)));
  return files;
}

async function startSolo(
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

test(
  'Bazel builds a generated C project remotely through solo mode',
  { skip, timeout: 20 * 60_000 },
  async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'idlebuild-e2e-'));
    const project = await writeCProject(join(tmp, 'ws'), MODULES);
    const bazel = bazelRunner(project, join(tmp, 'bazel-root'));
    const solo = await startSolo(join(tmp, 'solo-data'));
    let soloExit: unknown;
    try {
      // Step: a local build with the same --jobs, as the reference. The Bazel
      // server is started first so that its startup is not counted.
      await bazel('info', 'release');
      const local = await bazel('build', '//...', `--jobs=${JOBS}`, '--spawn_strategy=local');
      const localOutputs = await readOutputs(project);
      assert.equal(
        execFileSync(join(project.dir, 'bazel-bin/prog'), { encoding: 'utf8' }),
        project.expectedOutput,
      );

      // Step: the same build executed remotely through solo mode.
      await bazel('clean');
      const remoteFlags = [
        `--remote_executor=${solo.endpoint}`,
        `--jobs=${JOBS}`,
        '--spawn_strategy=remote',
        '--remote_local_fallback=false',
      ];
      const remote = await bazel('build', '//...', ...remoteFlags);
      const remoteCounts = processSummary(remote.output);
      assert.equal(
        remoteCounts.get('remote'),
        project.spawnCount,
        `expected every action remote:\n${remote.output}`,
      );
      assert.equal(
        execFileSync(join(project.dir, 'bazel-bin/prog'), { encoding: 'utf8' }),
        project.expectedOutput,
      );
      const remoteOutputs = await readOutputs(project);
      for (const [rel, bytes] of localOutputs) {
        assert.ok(
          bytes.equals(remoteOutputs.get(rel)!),
          `output ${rel} differs between local and remote builds`,
        );
      }

      // Step: after `bazel clean`, everything comes from the remote cache.
      await bazel('clean');
      const cached = await bazel('build', '//...', ...remoteFlags);
      const cachedCounts = processSummary(cached.output);
      assert.equal(
        cachedCounts.get('remote cache hit'),
        project.spawnCount,
        `expected only cache hits:\n${cached.output}`,
      );
      assert.equal(
        cachedCounts.get('remote'),
        undefined,
        'nothing may execute on the cached rebuild',
      );
      const cachedOutputs = await readOutputs(project);
      for (const [rel, bytes] of localOutputs)
        assert.ok(bytes.equals(cachedOutputs.get(rel)!), `cached ${rel} differs`);

      // Step: figures for the issue note and the benchmark log.
      const figures = {
        actions: project.spawnCount,
        jobs: JOBS,
        localSeconds: +local.seconds.toFixed(2),
        remoteSeconds: +remote.seconds.toFixed(2),
        cachedRebuildSeconds: +cached.seconds.toFixed(2),
      };
      console.log(`bazel e2e figures: ${JSON.stringify(figures)}`);
      await writeFile(join(repoRoot, 'dist/e2e-figures.json'), JSON.stringify(figures, null, 2));
    } finally {
      await bazel('shutdown').catch(() => undefined);
      solo.child.kill('SIGINT');
      [soloExit] = await once(solo.child, 'exit');
      await rm(tmp, { recursive: true, force: true });
    }
    assert.equal(soloExit, 0, `solo mode did not shut down cleanly on SIGINT:\n${solo.log()}`);
  },
);
