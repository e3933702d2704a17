import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const noneRunner = new URL('../../../src-main/core/runner/none.js', import.meta.url).href;

test('commands still running when the executor process exits are killed with it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'idlebuild-none-exit-'));
  try {
    // A child process starts a long Command, then exits abruptly (as on a
    // second Ctrl-C) without waiting for it.
    const script = `
      import { createNoneRunner } from ${JSON.stringify(noneRunner)};
      const prepared = await createNoneRunner().prepare({ rootDir: ${JSON.stringify(dir)} }, new Map());
      void prepared.run({
        arguments: ['/bin/sh', '-c', 'echo $$ > pid; sleep 100 & echo $! > bgpid; wait'],
        environment: [],
        workingDirectory: ${JSON.stringify(dir)},
        timeoutMs: 60000,
        terminationGraceMs: 1000,
        stdoutPath: ${JSON.stringify(join(dir, 'out'))},
        stderrPath: ${JSON.stringify(join(dir, 'err'))},
      });
      const { existsSync } = await import('node:fs');
      while (!existsSync(${JSON.stringify(join(dir, 'bgpid'))})) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 50));
      process.exit(130);
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      timeout: 20_000,
    });
    assert.equal(r.status, 130, String(r.stderr));

    const pids = [
      await readFile(join(dir, 'pid'), 'utf8'),
      await readFile(join(dir, 'bgpid'), 'utf8'),
    ];
    await new Promise((resolve) => setTimeout(resolve, 200));
    for (const pid of pids.map((p) => p.trim())) {
      const alive =
        existsSync(`/proc/${pid}`) &&
        !(await readFile(`/proc/${pid}/stat`, 'utf8')).includes(') Z ');
      assert.equal(alive, false, `process ${pid} outlived the executor`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
