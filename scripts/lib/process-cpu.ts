/**
 * @module CPU time of local processes from /proc (Linux): which processes a harness started (the
 * workerd it spawned) and how much CPU they used. On the shared benchmark machine wall-clock time
 * per token swings with other jobs' load, while the CPU a request costs workerd stays close to the
 * work done — bench:e2e reports both. Elsewhere (no /proc) every answer is null and callers skip it.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";

/** The fields after "pid (comm) " of /proc/<pid>/stat (comm may hold spaces and parentheses). */
function statFields(pid: number): string[] | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    return s.slice(s.lastIndexOf(")") + 2).split(" ");
  } catch {
    return null; // gone, or not readable
  }
}

/** Whether this machine has /proc process accounting. */
export function hasProcCpu(): boolean {
  return existsSync(`/proc/${process.pid}/stat`);
}

/** Every live process below `root` (children, their children, …); empty without /proc. */
export function descendantPids(root: number = process.pid): Set<number> {
  const out = new Set<number>();
  if (!hasProcCpu()) return out;
  const parentOf = new Map<number, number>();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    const f = statFields(Number(d));
    if (f) parentOf.set(Number(d), Number(f[1])); // field 4 of stat: ppid
  }
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, ppid] of parentOf) {
      if ((ppid === root || out.has(ppid)) && !out.has(pid)) {
        out.add(pid);
        grew = true;
      }
    }
  }
  return out;
}

/** Clock ticks per second of /proc's utime and stime (USER_HZ: 100 on every Linux Node runs on). */
const TICKS_PER_S = 100;

/** User + system CPU milliseconds used so far by `pids` (those still alive); null without /proc. */
export function cpuMs(pids: Iterable<number>): number | null {
  if (!hasProcCpu()) return null;
  let ticks = 0;
  for (const pid of pids) {
    const f = statFields(pid);
    if (f) ticks += Number(f[11]) + Number(f[12]); // fields 14 and 15: utime, stime
  }
  return (ticks * 1000) / TICKS_PER_S;
}
