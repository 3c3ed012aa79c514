/**
 * Progress bars for the long CLI steps (cli-progress), on stderr so stdout stays clean for
 * `--json`. Only drawn on a terminal: in CI logs and pipes a bar would be noise, so there the
 * handle does nothing and the scripts' own summary lines remain the output.
 */
import { SingleBar, Presets } from "cli-progress";

export interface Progress {
  update(done: number, payload?: Record<string, string | number>): void;
  stop(): void;
}

export interface ProgressOptions {
  enabled?: boolean;
  format?: string;
  /** Initial values of the format's {placeholders}. */
  payload?: Record<string, string | number>;
}

export function progressBar(label: string, total: number, opts: ProgressOptions = {}): Progress {
  const enabled = (opts.enabled ?? true) && Boolean(process.stderr.isTTY) && total > 0;
  if (!enabled) return { update() {}, stop() {} };
  const bar = new SingleBar(
    {
      format: opts.format ?? `${label} [{bar}] {percentage}% {value}/{total} {eta_formatted} left`,
      hideCursor: true,
      clearOnComplete: false,
      stream: process.stderr,
    },
    Presets.shades_classic,
  );
  bar.start(total, 0, opts.payload ?? {});
  return {
    update: (done, payload) => bar.update(done, payload),
    stop: () => bar.stop(),
  };
}

/** True when argv asks for help; scripts print their usage and exit 0. */
export function wantsHelp(argv: string[] = process.argv.slice(2)): boolean {
  return argv.includes("--help") || argv.includes("-h");
}
