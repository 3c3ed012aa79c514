/**
 * @module scripts/lib/process-cpu.ts: a child process is found below this one, and the CPU it burns
 * is counted (what bench:e2e's CPU per token rests on). Skipped where there is no /proc.
 */
import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";
import { cpuMs, descendantPids, hasProcCpu } from "../../../scripts/lib/process-cpu";

describe.skipIf(!hasProcCpu())("process CPU from /proc", () => {
  it("finds a spawned child and counts the CPU it uses", async () => {
    // A child that spins until it has used 300 ms of CPU (not wall-clock: the machine may be busy),
    // says so, and waits for stdin's end.
    const child = spawn(process.execPath, [
      "-e",
      "while (process.cpuUsage().user < 300e3); process.stdout.write('done\\n'); process.stdin.resume();",
    ]);
    try {
      await new Promise<void>((resolve) => child.stdout.once("data", () => resolve()));
      const pid = child.pid!;
      expect(descendantPids().has(pid)).toBe(true);
      expect(descendantPids(pid).has(process.pid)).toBe(false);
      const used = cpuMs([pid])!;
      expect(used).toBeGreaterThanOrEqual(250); // /proc counts in 10 ms ticks
      expect(used).toBeLessThan(10_000);
    } finally {
      child.stdin.end();
      child.kill();
    }
  });

  it("counts nothing for processes that are gone", () => {
    expect(cpuMs([])).toBe(0);
    expect(cpuMs([2 ** 22 + 7])).toBe(0); // above Linux's pid_max default
  });
});
