/**
 * @module R2 errors on demand, for chaos testing: a bucket that delegates to the real one and
 * rejects every operation while `failing()` says so — the way R2 answers during an outage. Only
 * reached through /admin/fault (ADMIN_FAULTS_ENABLED); otherwise `failing()` is always false.
 */

export class InjectedR2Error extends Error {
  override name = "InjectedR2Error";
  readonly retryable = true;
}

export function faultyBucket(bucket: R2Bucket, failing: () => boolean): R2Bucket {
  return new Proxy(bucket, {
    get(target, prop) {
      const v: unknown = Reflect.get(target, prop, target);
      if (typeof v !== "function") return v;
      return (...args: unknown[]) =>
        failing()
          ? Promise.reject(new InjectedR2Error(`R2 ${String(prop)} failed (injected fault)`))
          : Reflect.apply(v as (...a: unknown[]) => unknown, target, args);
    },
  });
}
