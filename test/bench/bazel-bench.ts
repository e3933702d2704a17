// Benchmark: how long Bazel takes to build a generated C project locally,
// remotely through `idlebuild solo`, and again from the remote cache after
// `bazel clean`, with the same --jobs; and how much memory solo mode used.
// Prints figures; asserts nothing about speed.
//
//   npm run bench -- [--modules 60] [--jobs 4] [--keep]
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { STRICT_REMOTE_FLAGS, bazelFlags } from '../../src-shared/bazel.js';
import { writeCProject } from '../e2e/c-project.js';
import { bazelRunner, processSummary, startSolo } from '../e2e/bazel-harness.js';

const { values } = parseArgs({
  options: {
    modules: { type: 'string', default: '60' },
    jobs: { type: 'string', default: '4' },
    keep: { type: 'boolean', default: false },
  },
});
const modules = Number(values.modules);
const jobs = Number(values.jobs);

/** Peak resident memory of a process in MiB, from /proc (Linux only). */
async function peakRssMiB(pid: number): Promise<number | undefined> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const kb = /VmHWM:\s+(\d+) kB/.exec(status)?.[1];
  return kb === undefined ? undefined : Math.round(Number(kb) / 1024);
}

const tmp = await mkdtemp(join(tmpdir(), 'idlebuild-bench-'));
const project = await writeCProject(join(tmp, 'ws'), modules);
const bazel = bazelRunner(project, join(tmp, 'bazel-root'));
const solo = await startSolo(join(tmp, 'solo-data'));
try {
  await bazel('info', 'release');
  const local = await bazel('build', '//...', `--jobs=${jobs}`, '--spawn_strategy=local');
  await bazel('clean');
  const remoteFlags = [...bazelFlags(solo.endpoint), ...STRICT_REMOTE_FLAGS, `--jobs=${jobs}`];
  const remote = await bazel('build', '//...', ...remoteFlags);
  await bazel('clean');
  const cached = await bazel('build', '//...', ...remoteFlags);
  const figures = {
    actions: project.spawnCount,
    jobs,
    localSeconds: +local.seconds.toFixed(2),
    remoteSeconds: +remote.seconds.toFixed(2),
    cachedRebuildSeconds: +cached.seconds.toFixed(2),
    remoteActions: processSummary(remote.output).get('remote') ?? 0,
    cacheHits: processSummary(cached.output).get('remote cache hit') ?? 0,
    soloPeakRssMiB: await peakRssMiB(solo.child.pid!),
  };
  const perAction = (figures.remoteSeconds - figures.localSeconds) / figures.actions;
  console.log(
    [
      `actions              ${figures.actions} (remote ${figures.remoteActions}, cache hits ${figures.cacheHits})`,
      `--jobs               ${jobs}`,
      `local build          ${figures.localSeconds} s`,
      `remote build (solo)  ${figures.remoteSeconds} s (${(perAction * 1000).toFixed(0)} ms/action more than local)`,
      `cached rebuild       ${figures.cachedRebuildSeconds} s`,
      `solo peak RSS        ${figures.soloPeakRssMiB ?? '?'} MiB`,
    ].join('\n'),
  );
  console.log(JSON.stringify(figures));
} finally {
  await bazel('shutdown').catch(() => undefined);
  solo.child.kill('SIGINT');
  await once(solo.child, 'exit');
  if (!values.keep) await rm(tmp, { recursive: true, force: true });
}
