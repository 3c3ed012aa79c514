/** @module Human-readable sizes for messages and reports. */

const MIB = 1024 * 1024;

/** `1536 * 1024` → "1.5 MiB". */
export function formatMiB(bytes: number): string {
  return `${(bytes / MIB).toFixed(1)} MiB`;
}
