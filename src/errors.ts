/**
 * @module The one error type the HTTP surface maps to a response (OpenAI error body), plus the
 * mapping itself. Anything else that escapes a handler is a server fault (500, no stack trace).
 */

export type ApiErrorType =
  | "invalid_request_error"
  | "not_found_error"
  | "authentication_error"
  | "permission_error"
  | "rate_limit_error"
  | "server_error"
  | "service_unavailable";

export class ApiError extends Error {
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 405 | 409 | 413 | 415 | 422 | 429 | 500 | 503,
    message: string,
    readonly type: ApiErrorType = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Response headers that belong to this error (`Retry-After`, `WWW-Authenticate`). */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  /** A 400 about one request field: `invalid("max_tokens", "must be ≥ 1, got 0")`. */
  static invalid(param: string, message: string, code = "invalid_value"): ApiError {
    return new ApiError(400, `${param}: ${message}`, "invalid_request_error", param, code);
  }

  /** Headers of a refusal the client may retry after `seconds` (whole seconds, at least 1). */
  /**
   * The model was re-uploaded while this request used it: nothing mixed two uploads, the request
   * stopped; a retry is served whole by the new upload (this isolate reloads within a second).
   */
  static modelChanged(message: string): ApiError {
    return new ApiError(503, message, "service_unavailable", null, "model_changed", ApiError.retryIn(1));
  }

  static retryIn(seconds: number): Record<string, string> {
    return { "Retry-After": String(Math.max(1, Math.ceil(seconds))) };
  }

  /** Seconds from this error's `Retry-After` header; null when it has none. */
  get retryAfter(): number | null {
    const v = this.headers["Retry-After"];
    return v === undefined ? null : Number(v);
  }

  toBody() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** Raised by an ExpertHost or the Worker when a model does not fit its memory budget. */
export class BudgetError extends Error {
  override name = "BudgetError";
}
