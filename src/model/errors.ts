/**
 * @module The one error type for malformed or unsupported model files. Its message always starts
 * with the file it is about and names the tensor or config field, so an operator can fix the
 * upload without reading code; the same names are kept as fields for programmatic use.
 */

export class ModelFormatError extends Error {
  override name = "ModelFormatError";

  constructor(
    message: string,
    /** File inside the model directory, e.g. "model-00002-of-00002.safetensors" or "config.json". */
    readonly file?: string,
    /** Tensor name, e.g. "model.layers.1.self_attn.q_proj.weight". */
    readonly tensor?: string,
    /** Config or header field, e.g. "num_key_value_heads" or "data_offsets". */
    readonly field?: string,
  ) {
    super(message);
  }
}

/**
 * A model's files in R2 are not the upload a reader was pinned to: the model was re-uploaded
 * since it was opened, or is being re-uploaded now. Retryable: the caller reopens the model (a new
 * upload is then read whole) or answers 503 with Retry-After so its client tries again.
 */
export class ModelChangedError extends Error {
  override name = "ModelChangedError";
  readonly retryable = true;

  constructor(
    message: string,
    /** File inside the model directory the mismatch was seen on (when one file is to blame). */
    readonly file?: string,
  ) {
    super(message);
  }
}
