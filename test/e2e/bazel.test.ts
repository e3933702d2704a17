import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { STRICT_REMOTE_FLAGS, bazelFlags } from '../../src-shared/bazel.js';
import { writeCProject } from './c-project.js';
import { bazelRunner, processSummary, readOutputs, repoRoot, startSolo } from './bazel-harness.js';

// End to end: Debian's Bazel builds a generated C project locally, then
// remotely through `idlebuild solo`, then again after `bazel clean` from the
// remote cache. Needs `bazel` (Debian's bazel-bootstrap) and gcc on PATH; set
// IDLEBUILD_SKIP_BAZEL=1 to skip on a machine without them (CI never does).

const MODULES = 60;
const JOBS = 4;
const skip = process.env.IDLEBUILD_SKIP_BAZEL === '1' ? 'IDLEBUILD_SKIP_BAZEL=1' : false;

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
      const remoteFlags = [...bazelFlags(solo.endpoint), ...STRICT_REMOTE_FLAGS, `--jobs=${JOBS}`];
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
