/**
 * @module Where checkpoint bytes come from: the `ByteSource`/`FileStore` interfaces the safetensors
 * reader works on, and their two implementations — files in memory (tests, scripts) and a model
 * directory in R2 read by ranged gets (the Worker and the ExpertHosts). Web-standard APIs only.
 */
import { ModelFormatError } from "./errors";

/** A readable file. Reads past the end are the source's error; the reader never issues them. */
export interface ByteSource {
  /** File name relative to the model directory, used in error messages. */
  readonly name: string;
  size(): Promise<number>;
  read(offset: number, length: number): Promise<Uint8Array>;
}

/** A model directory; `open` takes a relative name such as "config.json" and returns null if absent. */
export interface FileStore {
  readonly label: string;
  open(name: string): Promise<ByteSource | null>;
}

/** Files held in memory (tests, scripts). */
export function memoryFileStore(files: Record<string, Uint8Array>, label = "memory"): FileStore {
  return {
    label,
    async open(name) {
      if (!Object.hasOwn(files, name)) return null;
      const data = files[name];
      return {
        name,
        size: async () => data.byteLength,
        read: async (offset, length) => {
          if (offset < 0 || length < 0 || offset + length > data.byteLength) {
            throw new RangeError(
              `${name}: read of ${length} bytes at ${offset} is outside the ${data.byteLength}-byte file`,
            );
          }
          return data.subarray(offset, offset + length);
        },
      };
    },
  };
}

/** A model directory in R2 under `prefix` (e.g. "models/<id>/"); sizes via head(), data via ranged get(). */
export function r2FileStore(bucket: R2Bucket, prefix: string): FileStore {
  return {
    label: `r2:${prefix}`,
    async open(name) {
      const key = prefix + name;
      const head = await bucket.head(key);
      if (!head) return null;
      const size = head.size;
      return {
        name,
        size: async () => size,
        read: async (offset, length) => {
          if (length === 0) return new Uint8Array(0);
          const obj = await bucket.get(key, { range: { offset, length } });
          if (!obj) throw new ModelFormatError(`${name}: R2 object "${key}" disappeared while reading`, name);
          const bytes = new Uint8Array(await obj.arrayBuffer());
          if (bytes.byteLength !== length) {
            throw new ModelFormatError(
              `${name}: R2 returned ${bytes.byteLength} bytes for a ${length}-byte read at ${offset} ` +
                "(object changed or truncated)",
              name,
            );
          }
          return bytes;
        },
      };
    },
  };
}
