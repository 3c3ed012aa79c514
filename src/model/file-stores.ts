/**
 * @module Where checkpoint bytes come from: the `ByteSource`/`FileStore` interfaces the safetensors
 * reader works on, and their two implementations — files in memory (tests, scripts) and a model
 * directory in R2 read by ranged gets (the Worker and the ExpertHosts). Web-standard APIs only.
 */
import { ModelChangedError, ModelFormatError } from "./errors";

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

/**
 * The upload a reader is pinned to: each file's R2 etag. With `expected` (the model's upload
 * manifest), a file whose etag differs from its entry, or that has none, is refused with
 * ModelChangedError when opened (the model is being re-uploaded); without it, each file is pinned
 * to the etag it has when first opened. Every ranged read then asks R2 for that etag only.
 */
export interface R2Pins {
  expected?: ReadonlyMap<string, string>;
  /** Etag per file name, filled as files are opened. */
  seen: Map<string, string>;
}

/**
 * A model directory in R2 under `prefix` (e.g. "models/<id>/"); sizes via head(), data via ranged
 * get(). With `pins`, every read is conditional on the file's pinned etag (`onlyIf.etagMatches`):
 * a file replaced since it was opened fails with ModelChangedError, never mixing two uploads.
 */
export function r2FileStore(bucket: R2Bucket, prefix: string, pins?: R2Pins): FileStore {
  return {
    label: `r2:${prefix}`,
    async open(name) {
      const key = prefix + name;
      const head = await bucket.head(key);
      if (!head) {
        if (pins?.expected?.has(name))
          throw new ModelChangedError(`${name}: listed in the upload manifest but absent (re-uploaded?)`, name);
        return null;
      }
      const want = pins?.expected ? pins.expected.get(name) : pins?.seen.get(name);
      if (pins && want !== undefined && want !== head.etag) {
        throw new ModelChangedError(
          `${name}: R2 holds another upload than the one this model was opened with (etag ${head.etag}, ` +
            `expected ${want}): the model is being or was re-uploaded`,
          name,
        );
      }
      if (pins?.expected && want === undefined)
        throw new ModelChangedError(`${name}: not part of the model's upload manifest (re-uploaded?)`, name);
      pins?.seen.set(name, head.etag);
      const etag = head.etag;
      const size = head.size;
      return {
        name,
        size: async () => size,
        read: async (offset, length) => {
          if (length === 0) return new Uint8Array(0);
          const obj = await bucket.get(
            key,
            pins
              ? { range: { offset, length }, onlyIf: { etagMatches: etag } }
              : {
                  range: { offset, length },
                },
          );
          if (!obj) throw new ModelFormatError(`${name}: R2 object "${key}" disappeared while reading`, name);
          // A failed precondition answers the object's metadata without a body.
          if (pins && (!("arrayBuffer" in obj) || obj.etag !== etag)) {
            throw new ModelChangedError(
              `${name}: re-uploaded while being read (etag ${obj.etag}, pinned ${etag}); the model will be reopened`,
              name,
            );
          }
          if (!("arrayBuffer" in obj)) throw new ModelFormatError(`${name}: R2 answered "${key}" without a body`, name);
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
