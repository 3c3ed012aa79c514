/**
 * @module shared-work.spec — work shared by concurrent requests, inside workerd: a plain promise
 * another request started hangs its waiter once that request has ended (its timer went with it),
 * which is how a request could wait forever on a model load whose starter's client went away; a
 * Flight's waiter notices the starter is gone and does the work in its own request.
 */
import { exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";

async function get(path: string): Promise<Response> {
  return exports.default.fetch(new Request(`http://shared.test${path}`));
}

async function runs(): Promise<number> {
  return ((await (await get("/runs")).json()) as { runs: number }).runs;
}

describe("work another request started, whose request has ended", () => {
  it("a plain shared promise never settles for the waiter (the hazard)", async () => {
    expect(await (await get("/start?key=p1&mode=promise&ms=100")).text()).toBe("started");
    const waited = get("/wait?key=p1&mode=promise").then(
      (r) => r.status,
      () => "failed",
    );
    const timeout = new Promise((r) => setTimeout(() => r("still waiting"), 3000));
    const got = await Promise.race([waited, timeout]);
    // workerd either cancels the waiter as hung (an error) or it is still waiting: never the value.
    expect([500, "failed", "still waiting"]).toContain(got);
  });

  it("a Flight's waiter takes the work over and answers in its own request", async () => {
    const before = await runs();
    expect(await (await get("/start?key=f1&mode=flight&ms=100")).text()).toBe("started");
    const t0 = Date.now();
    const res = await get("/wait?key=f1&mode=flight&ms=100");
    expect(res.status).toBe(200);
    // The starter's run never finished: the value is the waiter's own run.
    expect(await res.json()).toEqual({ run: before + 1 });
    expect(Date.now() - t0).toBeLessThan(10_000);
  });
});

describe("work shared while its starter is still there", () => {
  it("runs once and every request gets the value", async () => {
    const before = await runs();
    const all = await Promise.all([0, 1, 2].map(() => get("/run?key=f2&mode=flight&ms=300")));
    const values = await Promise.all(all.map((r) => r.json()));
    expect(values).toEqual([0, 1, 2].map(() => ({ run: before + 1 })));
    expect(await runs()).toBe(before + 1);
  });
});
