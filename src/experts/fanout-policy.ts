/** @module Fan-out constants shared by the client and the RPC count (pure, no runtime imports). */

/** Tries per expert batch: the first replica, then up to two others after failures. */
export const MAX_ATTEMPTS = 3;
