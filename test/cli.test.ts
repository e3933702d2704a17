import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';

// The CLI as a user runs it: the real bin script in a child process.

const repoRoot = new URL('../../', import.meta.url).pathname;
const bin = join(repoRoot, 'bin/idlebuild.js');

function run(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, [bin, ...args], {
    encoding: 'utf8',
    env: { ...process.env, IDLEBUILD_LOG_LEVEL: 'warn', ...env },
    timeout: 30_000,
  });
}

test('--help lists every command and exits 0', () => {
  const r = run(['--help']);
  assert.equal(r.status, 0);
  for (const cmd of ['start', 'solo', 'server', 'executor'])
    assert.match(r.stdout, new RegExp(`\\n  ${cmd} `));
});

test('an unknown command prints usage and exits 2', () => {
  const r = run(['bogus']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unknown command "bogus"/);
  assert.match(r.stderr, /Usage: idlebuild/);
});

test('a bad --port is a clear error', () => {
  const r = run(['server', '--port', 'abc']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /Invalid --port "abc"/);
});

test('executor without app_target says what to do', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'idlebuild-cli-'));
  try {
    const config = join(dir, 'executor.yaml');
    await writeFile(config, 'executor:\n  pool: test\n');
    const r = run(['executor', '--config', config], { IDLEBUILD_HOME: dir });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /executor\.app_target is not set/);
    assert.match(r.stderr, /idlebuild solo/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a config with an unknown key stops startup naming the key', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'idlebuild-cli-'));
  try {
    const config = join(dir, 'executor.yaml');
    await writeFile(config, 'executor:\n  milicpu: 100\n');
    const r = run(['start', '--config', config], { IDLEBUILD_HOME: dir });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /executor\.milicpu/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('server starts on a free port, prints its endpoint and stops on SIGTERM', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'idlebuild-cli-'));
  const child = spawn(process.execPath, [bin, 'server', '--port', '0', '--data-dir', dir], {
    env: { ...process.env, IDLEBUILD_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  try {
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no endpoint printed:\n${out}`)), 20_000);
      child.stdout.on('data', () => {
        if (/grpc:\/\/127\.0\.0\.1:[1-9]\d*/.test(out)) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    assert.match(out, /bazel build --remote_executor=grpc:\/\/127\.0\.0\.1:\d+ \/\/\.\.\./);
    child.kill('SIGTERM');
    const [code] = await once(child, 'exit');
    assert.equal(code, 0);
  } finally {
    child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});

test('a bad IDLEBUILD_LOG_LEVEL names the variable and the valid levels', () => {
  const r = run(['server', '--port', '0'], { IDLEBUILD_LOG_LEVEL: 'bogus' });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /IDLEBUILD_LOG_LEVEL is "bogus": use one of trace, debug, info/);
});

test('a mistyped option is one short line, not the whole usage', () => {
  const r = run(['solo', '--prot', '3']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /Unknown option '--prot'/);
  assert.ok(r.stderr.split('\n').length <= 3, r.stderr);
});

test('IDLEBUILD_CONFIG does not stop the server, which reads no config', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'idlebuild-cli-'));
  const child = spawn(process.execPath, [bin, 'server', '--port', '0', '--data-dir', dir], {
    env: { ...process.env, IDLEBUILD_LOG_LEVEL: 'warn', IDLEBUILD_CONFIG: join(dir, 'x.yaml') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  try {
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const [code] = await Promise.race([
      once(child, 'exit'),
      new Promise<[null]>((resolve) =>
        child.stdout.on('data', () => /Endpoint/.test(out) && resolve([null])),
      ),
    ]);
    assert.equal(code, null, `server exited early: ${out}`);
  } finally {
    child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});
