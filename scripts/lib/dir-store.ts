/**
 * @module A model directory on disk as a `FileStore` (src/model/safetensors.ts), read by ranges:
 * only what is asked for is read.
 */
import { closeSync, existsSync, openSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import type { FileStore } from "../../src/model/safetensors";

export function dirFileStore(dir: string): FileStore {
  return {
    label: dir,
    async open(name) {
      const path = join(dir, name);
      if (!existsSync(path) || !statSync(path).isFile()) return null;
      return {
        name,
        size: async () => statSync(path).size,
        async read(offset, length) {
          const out = new Uint8Array(length);
          const fd = openSync(path, "r");
          try {
            let done = 0;
            while (done < length) {
              const n = readSync(fd, out, done, length - done, offset + done);
              if (n === 0) throw new Error(`${path}: unexpected end of file at ${offset + done}`);
              done += n;
            }
          } finally {
            closeSync(fd);
          }
          return out;
        },
      };
    },
  };
}
