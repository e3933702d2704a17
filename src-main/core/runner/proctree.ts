import { readdir, readFile } from 'node:fs/promises';

/**
 * Process-tree helpers for runners that start a Command in its own process
 * group: signal the whole tree, and sample its CPU time and memory. They read
 * /proc, so on systems without it (macOS) signalling falls back to the process
 * group alone and sampling returns nothing.
 */

interface ProcStat {
  pid: number;
  ppid: number;
  pgrp: number;
  state: string;
  /** utime + stime + cutime + cstime, in clock ticks. */
  cpuTicks: number;
}

// Limitation: assumes USER_HZ = 100, which holds on every mainstream Linux
// build; Node cannot ask sysconf(_SC_CLK_TCK).
const NANOS_PER_TICK = 10_000_000;

/** Parses /proc/<pid>/stat; the command name may hold spaces and parentheses. */
function parseStat(text: string): ProcStat | undefined {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < 0) return undefined;
  const rest = text.slice(close + 2).split(' ');
  const field = (n: number) => Number(rest[n - 3]);
  return {
    pid: Number(text.slice(0, open).trim()),
    ppid: field(4),
    pgrp: field(5),
    state: rest[0] ?? '?',
    cpuTicks: field(14) + field(15) + field(16) + field(17),
  };
}

async function readProcStat(pid: number): Promise<ProcStat | undefined> {
  try {
    return parseStat(await readFile(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined; // exited meanwhile
  }
}

async function listProcesses(): Promise<ProcStat[]> {
  let names: string[];
  try {
    names = await readdir('/proc');
  } catch {
    return [];
  }
  const pids = names.filter((n) => /^\d+$/.test(n)).map(Number);
  const stats = await Promise.all(pids.map(readProcStat));
  return stats.filter((s): s is ProcStat => s !== undefined);
}

/**
 * The live processes of group pgid plus every descendant of them, including
 * descendants that moved to another group or session (as long as their parent
 * chain back to a member still exists).
 */
export async function processTree(pgid: number): Promise<ProcStat[]> {
  const all = await listProcesses();
  const children = new Map<number, ProcStat[]>();
  for (const p of all) {
    const siblings = children.get(p.ppid);
    if (siblings) siblings.push(p);
    else children.set(p.ppid, [p]);
  }
  const found = new Map<number, ProcStat>();
  const queue = all.filter((p) => p.pgrp === pgid);
  while (queue.length > 0) {
    const p = queue.pop()!;
    if (found.has(p.pid)) continue;
    found.set(p.pid, p);
    queue.push(...(children.get(p.pid) ?? []));
  }
  return [...found.values()];
}

function kill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // ESRCH: already gone. EPERM: not ours to signal (it changed user).
  }
}

/**
 * Sends signal to process group pgid and to the descendants of its members
 * that left the group. Nothing is sent when stillRunning() turns false
 * during the /proc scan (the group's id may be reused once it is gone).
 */
export async function signalProcessTree(
  pgid: number,
  signal: NodeJS.Signals,
  stillRunning: () => boolean = () => true,
): Promise<void> {
  const tree = await processTree(pgid);
  if (!stillRunning()) return;
  kill(-pgid, signal);
  for (const p of tree) if (p.pgrp !== pgid) kill(p.pid, signal);
}

/** Sends signal to process group pgid only (no /proc scan); for use after the leader exited. */
export function signalProcessGroup(pgid: number, signal: NodeJS.Signals): void {
  kill(-pgid, signal);
}

export interface TreeUsage {
  /** CPU time of the live tree members plus the children they have reaped. */
  cpuNanos: number;
  /** Sum of the resident set sizes of the live tree members. */
  rssBytes: number;
}

async function rssBytes(pid: number): Promise<number> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
    return kb ? Number(kb) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** One sample of the tree's resource use, or undefined without /proc. */
export async function sampleProcessTree(pgid: number): Promise<TreeUsage | undefined> {
  const tree = await processTree(pgid);
  if (tree.length === 0) return undefined;
  const live = tree.filter((p) => p.state !== 'Z');
  const rss = await Promise.all(live.map((p) => rssBytes(p.pid)));
  return {
    cpuNanos: tree.reduce((sum, p) => sum + p.cpuTicks * NANOS_PER_TICK, 0),
    rssBytes: rss.reduce((a, b) => a + b, 0),
  };
}
