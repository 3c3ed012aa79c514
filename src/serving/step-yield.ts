/**
 * @module When the step loop's leader yields more than one turn of the event loop between two steps
 * (src/serving/step-batcher.ts). In workerd the event loop polls for I/O, timers and the promise
 * resolutions other requests send (`handle_cross_request_promise_resolution`) only when its queue is
 * empty; a step — Wasm and in-process ExpertHost calls — keeps the queue busy from the leader's timer
 * to its next yield. So each 0 ms timer between steps lets every other I/O chain of the isolate
 * advance by about one such hop, and a response's start takes several: the member's wake, its
 * handler returning the Response, the runtime's front worker (another isolate on the same thread in
 * local `wrangler dev`), the socket. With one timer a step, first tokens reached the clients several
 * steps after they were sampled, all in the same millisecond. The leader now yields a few more times
 * while a member's consumer is behind; a member that keeps up costs no extra turn.
 */

/** More 0 ms timers, at most, after a step's own yield while a member's consumer is behind. */
export const CATCH_UP_YIELDS = 3;

/** A member as the yield policy sees it. */
export interface ConsumerView {
  /** Tokens the steps produced for it. */
  produced: number;
  /** Of those, the ones its consumer has not taken yet. */
  untaken: number;
}

/**
 * Whether the leader should yield once more before the next step: a member's consumer has not taken
 * its first token yet (its response is still starting), or holds `lookahead` untaken tokens (its
 * response is not being written — the SSE writer waits for the body to be read — and it would drop
 * out of the next step). A consumer that keeps up holds at most one untaken token after a step.
 */
export function consumerBehind(members: Iterable<ConsumerView>, lookahead: number): boolean {
  for (const m of members) {
    if (m.untaken > 0 && (m.untaken >= lookahead || m.produced === m.untaken)) return true;
  }
  return false;
}

/** One turn of the event loop (a 0 ms timer): the isolate's pending I/O and requests run first. */
export function macrotask(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}
