import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Code, GrpcError } from '../../../src-main/core/errors.js';
import { createNoneRunner } from '../../../src-main/core/runner/none.js';
import type { RunRequest, RunResult } from '../../../src-main/core/runner/runner.js';

let root: string;
let ws: string;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'none-runner-test-'));
  ws = join(root, 'ws');
  await mkdir(ws);
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const SYSTEM_PATH = [{ name: 'PATH', value: '/usr/bin:/bin' }];

/** Runs args in the workspace with the none runner; returns the result and both outputs. */
async function run(
  args: string[],
  opts: Partial<RunRequest> = {},
): Promise<RunResult & { stdout: string; stderr: string }> {
  const runner = createNoneRunner();
  const prepared = await runner.prepare({ rootDir: ws }, new Map());
  const req: RunRequest = {
    arguments: args,
    environment: [],
    workingDirectory: ws,
    timeoutMs: 10_000,
    terminationGraceMs: 1_000,
    stdoutPath: join(root, 'stdout'),
    stderrPath: join(root, 'stderr'),
    ...opts,
  };
  try {
    const result = await prepared.run(req);
    const stdout = await readFile(req.stdoutPath, 'utf8');
    const stderr = await readFile(req.stderrPath, 'utf8');
    return { ...result, stdout, stderr };
  } finally {
    await prepared.dispose();
  }
}

/** True once pid has exited (gone from /proc, or a zombie nobody reaped yet). */
async function exited(pid: number): Promise<boolean> {
  for (let i = 0; i < 40; i++) {
    try {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2)[0];
      if (state === 'Z' || state === 'X') return true;
    } catch {
      return true;
    }
    await sleep(50);
  }
  return false;
}

async function pidsIn(file: string): Promise<number[]> {
  const text = await readFile(file, 'utf8');
  return text.trim().split('\n').map(Number);
}

async function script(path: string, body: string): Promise<void> {
  await writeFile(path, `#!/bin/sh\n${body}\n`);
  await chmod(path, 0o755);
}

describe('none runner', { timeout: 30_000 }, () => {
  test('reports exit codes 0 and 3 as results', async () => {
    const ok = await run(['/bin/sh', '-c', 'echo fine']);
    assert.equal(ok.exitCode, 0);
    assert.equal(ok.stdout, 'fine\n');
    const failed = await run(['/bin/sh', '-c', 'echo oops >&2; exit 3']);
    assert.equal(failed.exitCode, 3);
    assert.equal(failed.signal, undefined);
    assert.equal(failed.stderr, 'oops\n');
    assert.equal(failed.timedOut, false);
    assert.ok(failed.endTime >= failed.startTime);
  });

  test("the environment is exactly the Command's, with nothing from the executor", async () => {
    const environment = [
      { name: 'A', value: '1' },
      { name: 'B', value: 'two words' },
    ];
    const result = await run(['/usr/bin/env'], { environment });
    assert.equal(result.stdout, 'A=1\nB=two words\n');
  });

  test("a bare argv0 is looked up on the action's PATH, not the executor's", async () => {
    const bin = join(root, 'tools');
    await mkdir(bin);
    await script(join(bin, 'hello'), 'echo "hello from $0"');
    const found = await run(['hello'], { environment: [{ name: 'PATH', value: bin }] });
    assert.equal(found.stdout, `hello from ${bin}/hello\n`);

    // `env` exists in the executor's PATH but not in the action's.
    const missing = await run(['env'], { environment: [{ name: 'PATH', value: bin }] });
    assert.equal(missing.exitCode, 127);
    assert.match(missing.stderr, /^Failed to start command "env": not found on the action's PATH/);
  });

  test('an argv0 containing a slash is relative to the working directory', async () => {
    await mkdir(join(ws, 'sub', 'tools'), { recursive: true });
    await script(join(ws, 'sub', 'tools', 'run.sh'), 'echo "ran $1"');
    const result = await run(['tools/run.sh', 'x'], { workingDirectory: join(ws, 'sub') });
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout, 'ran x\n');
  });

  test('the Command runs in its working directory', async () => {
    const dir = join(ws, 'pkg', 'lib');
    await mkdir(dir, { recursive: true });
    const result = await run(['/bin/pwd'], { workingDirectory: dir });
    assert.equal(result.stdout, `${await realpath(dir)}\n`);
  });

  test('a missing argv0 exits 127 and a non-executable one 126, with the reason in stderr', async () => {
    const missing = await run(['./no-such-tool']);
    assert.equal(missing.exitCode, 127);
    assert.match(missing.stderr, /^Failed to start command "\.\/no-such-tool": .* does not exist/);
    assert.equal(missing.stdout, '');

    await writeFile(join(ws, 'data.txt'), 'not a program');
    const notExec = await run(['./data.txt']);
    assert.equal(notExec.exitCode, 126);
    assert.match(notExec.stderr, /^Failed to start command "\.\/data\.txt": .* is not executable/);
  });

  test('bad requests are rejected with a gRPC code', async () => {
    await assert.rejects(run([]), (err: GrpcError) => err.code === Code.INVALID_ARGUMENT);
    await assert.rejects(
      run(['/bin/echo', 'a\0b']),
      (err: GrpcError) => err.code === Code.INVALID_ARGUMENT,
    );
    await assert.rejects(
      run(['/bin/true'], { environment: [{ name: 'A=B', value: '1' }] }),
      (err: GrpcError) => err.code === Code.INVALID_ARGUMENT && /"A=B"/.test(err.message),
    );
    await assert.rejects(
      run(['/bin/true'], { stdoutPath: join(root, 'no', 'dir', 'stdout') }),
      (err: GrpcError) =>
        err.code === Code.INTERNAL && /Failed to create stdout file/.test(err.message),
    );
    await assert.rejects(
      run(['/bin/true'], { workingDirectory: join(ws, 'missing') }),
      (err: GrpcError) =>
        err.code === Code.FAILED_PRECONDITION && /Working directory/.test(err.message),
    );
  });

  test('a timeout kills the whole process tree and keeps the partial stdout', async () => {
    const pids = join(root, 'pids');
    const result = await run(
      [
        '/bin/sh',
        '-c',
        `sleep 100 & echo $! > ${pids}; sleep 100 & echo $! >> ${pids}; echo partial; wait`,
      ],
      { timeoutMs: 300, terminationGraceMs: 2_000 },
    );
    assert.equal(result.timedOut, true);
    assert.equal(result.signal, 'SIGTERM');
    assert.equal(result.exitCode, 128 + 15);
    assert.equal(result.stdout, 'partial\n');
    const sleeps = await pidsIn(pids);
    assert.equal(sleeps.length, 2);
    for (const pid of sleeps) assert.ok(await exited(pid), `sleep ${pid} still running`);
  });

  test('a process ignoring SIGTERM is killed with SIGKILL after the grace period', async () => {
    const started = Date.now();
    const result = await run(
      ['/bin/sh', '-c', "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
      { timeoutMs: 200, terminationGraceMs: 300 },
    );
    assert.equal(result.timedOut, true);
    assert.equal(result.signal, 'SIGKILL');
    assert.equal(result.exitCode, 128 + 9);
    assert.equal(result.stdout, 'ready\n');
    assert.ok(Date.now() - started >= 500, 'waited for the grace period');
  });

  test('an abort kills the process tree at once', async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 200);
    const pid = join(root, 'pid');
    const started = Date.now();
    const result = await run(['/bin/sh', '-c', `sleep 100 & echo $! > ${pid}; wait`], {
      signal: controller.signal,
    });
    assert.equal(result.aborted, true);
    assert.equal(result.timedOut, false);
    assert.equal(result.signal, 'SIGKILL');
    assert.ok(Date.now() - started < 2_000);
    assert.ok(await exited((await pidsIn(pid))[0]));
  });

  test('background processes do not outlive a Command that exits normally', async () => {
    const pid = join(root, 'pid');
    const result = await run(['/bin/sh', '-c', `sleep 100 & echo $! > ${pid}; exit 0`]);
    assert.equal(result.exitCode, 0);
    assert.ok(await exited((await pidsIn(pid))[0]), 'background sleep was killed');
  });

  test('Commands that exit at once are all reported', { timeout: 5_000 }, async () => {
    const runner = createNoneRunner();
    const prepared = await runner.prepare({ rootDir: ws }, new Map());
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        prepared.run({
          arguments: ['/bin/sh', '-c', `exit ${i}`],
          environment: [],
          workingDirectory: ws,
          timeoutMs: 5_000,
          terminationGraceMs: 100,
          stdoutPath: join(root, `out-${i}`),
          stderrPath: join(root, `err-${i}`),
        }),
      ),
    );
    assert.deepEqual(
      results.map((r) => r.exitCode),
      Array.from({ length: 20 }, (_, i) => i),
    );
    assert.ok(results.every((r) => !r.timedOut));
  });

  test('the Command runs at the lowest priority', async () => {
    // The shell pauses so that nice starts after the priority was lowered.
    const result = await run(['/bin/sh', '-c', 'sleep 0.1; exec nice'], {
      environment: SYSTEM_PATH,
    });
    assert.equal(result.stdout, '19\n');
  });

  test('large stdout lands in the file intact', async () => {
    const data = randomBytes(20 * 1024 * 1024);
    const input = join(root, 'big');
    await writeFile(input, data);
    const runner = createNoneRunner();
    const prepared = await runner.prepare({ rootDir: ws }, new Map());
    const stdoutPath = join(root, 'out');
    const result = await prepared.run({
      arguments: ['/bin/cat', input],
      environment: [],
      workingDirectory: ws,
      timeoutMs: 10_000,
      terminationGraceMs: 1_000,
      stdoutPath,
      stderrPath: join(root, 'err'),
    });
    assert.equal(result.exitCode, 0);
    assert.ok(data.equals(await readFile(stdoutPath)), 'stdout differs from the input');
  });

  test('CPU time and peak memory are sampled while the Command runs', async () => {
    const result = await run(['/bin/sh', '-c', 'while :; do :; done'], {
      timeoutMs: 1_200,
      terminationGraceMs: 200,
    });
    assert.equal(result.timedOut, true);
    assert.ok((result.cpuNanos ?? 0) >= 300_000_000, `cpuNanos ${result.cpuNanos}`);
    assert.ok((result.peakMemoryBytes ?? 0) > 0, `peakMemoryBytes ${result.peakMemoryBytes}`);
  });
});
