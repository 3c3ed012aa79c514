/**
 * @module Keep-alive for the Durable Objects that hold weights in memory (StageHost, HeadHost,
 * ExpertHost): an idle Durable Object is evicted by the runtime (~10–13 s without an incoming event
 * in local workerd, 70–140 s in production; README, "KV caches and admission"), and an evicted host
 * reloads its layers, head rows or experts from R2 on its next call — seconds per token on a cold,
 * slow request. An alarm is an incoming event: while a host is "in use" it wakes itself every
 * KEEPALIVE_TICK_MS, and once it is not, it stops re-arming and the runtime may evict it as before
 * (replica release and idle billing rely on idle hosts going away).
 *
 * "In use" = it served a call within HOST_KEEPALIVE_MS, or its owner says it must stay (a StageHost
 * holding sessions' KV caches). A served call costs a clock read; an alarm is written at most once
 * per tick.
 */
import { intVar, perEnv, type Vars } from "./env";

/** How often a host in use wakes itself: well under local workerd's ~10 s idle eviction. */
export const KEEPALIVE_TICK_MS = 5_000;

/**
 * HOST_KEEPALIVE_MS (default 60 s, 0 = off): how long after its last served call a host is kept.
 * The same 60 s as a stage's idle-session timeout (SESSION_IDLE_MS): a session unused that long is
 * over, and so is the traffic that needs these weights warm. It covers the longest gap between two
 * calls on one host while a model is served — a cold token on full-size granite took up to ~20 s,
 * and an ExpertHost may sit out a few tokens — and the pause between a client's requests.
 */
export const hostKeepAliveMs = perEnv((env: Vars) =>
  intVar(env, "HOST_KEEPALIVE_MS", 60_000, { min: 0, max: 24 * 3600 * 1000 }),
);

/** What the helper needs of a Durable Object's state (`ctx`); a plain object in unit tests. */
export interface AlarmHost {
  storage: { setAlarm(scheduledTime: number): Promise<void> };
  waitUntil(p: Promise<unknown>): void;
}

export class KeepAlive {
  #lastCall = 0;
  /** Whether this instance has an alarm pending (set by it since it started, not yet fired). */
  #armed = false;

  /**
   * @param windowMs the HOST_KEEPALIVE_MS in force (read per call: the env is the DO's).
   * @param hold true while the owner must stay in memory whatever the window (e.g. it holds KV).
   */
  constructor(
    private readonly ctx: AlarmHost,
    private readonly windowMs: () => number,
    private readonly hold: () => boolean = () => false,
    private readonly tickMs: number = KEEPALIVE_TICK_MS,
  ) {}

  /** When this instance last served a call (0 = not since it started). */
  get lastCallAt(): number {
    return this.#lastCall;
  }

  /** A call was served (or the owner took on something `hold` reports): stay in memory. */
  touch(now: number = Date.now()): void {
    this.#lastCall = now;
    this.#arm(now);
  }

  /** Arms the next tick if the owner holds something, without counting a served call. */
  holdNow(now: number = Date.now()): void {
    if (this.hold()) this.#arm(now);
  }

  /**
   * The owner's `alarm()` calls this: re-arms while the instance is in use, else lets it go idle.
   * An instance evicted and woken by its own pending alarm has served nothing: it stays idle.
   */
  async alarm(now: number = Date.now()): Promise<boolean> {
    this.#armed = false;
    const window = this.windowMs();
    const recent = this.#lastCall > 0 && window > 0 && now - this.#lastCall < window;
    if (!recent && !this.hold()) return false;
    this.#armed = true;
    await this.ctx.storage.setAlarm(now + this.tickMs);
    return true;
  }

  #arm(now: number): void {
    if (this.#armed || (!this.hold() && this.windowMs() <= 0)) return;
    this.#armed = true;
    this.ctx.waitUntil(
      this.ctx.storage.setAlarm(now + this.tickMs).catch((err: unknown) => {
        this.#armed = false; // the next call tries again
        console.error(`keep-alive: setAlarm failed: ${err instanceof Error ? err.message : String(err)}`);
      }),
    );
  }
}
