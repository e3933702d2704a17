// Runs an executor in its own process for tests that kill it:
//   node executor-child.js <server address> <work dir> <host id>
// Prints "ready" once registered; SIGTERM stops it gracefully.
import { startExecutor } from '../../../src-main/core/executor/executor.js';
import { testConfig, testIdentity } from './executor-harness.js';

const [address, dir, hostId] = process.argv.slice(2);
const executor = await startExecutor({
  config: testConfig(dir, address),
  identity: testIdentity(hostId),
});
const poll = setInterval(() => {
  if (!executor.snapshot().connected) return;
  clearInterval(poll);
  process.stdout.write('ready\n');
}, 20);
process.once('SIGTERM', () => {
  void executor.stop({ graceMs: 0 }).then(() => process.exit(0));
});
