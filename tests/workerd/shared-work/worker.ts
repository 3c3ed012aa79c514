/**
 * @module The Worker of the shared-work spec: one piece of work per key, kept in a module-level map
 * the way src/serving/model-runtime.ts keeps a model's load, shared either as a plain promise (the
 * hazard) or as a Flight (src/platform/shared-work.ts).
 *
 * GET /start?key=K&mode=M&ms=N starts the work (a timer of N ms of its request, then a value)
 * and answers at once: its request ends with the work still under way. GET /run?… starts or joins
 * it and answers with the value; GET /wait?… only awaits what another request started.
 */
import { Flight, shareWork } from "../../../src/platform/shared-work";

interface Outcome {
  /** Which run of the work produced the value (1 = the first request's). */
  run: number;
}

let runs = 0;
const promises = new Map<string, Promise<Outcome>>();
const flights = new Map<string, Flight<Outcome>>();

async function work(ms: number): Promise<Outcome> {
  await new Promise((r) => setTimeout(r, ms));
  return { run: ++runs };
}

function startFlight(key: string, ms: number): Flight<Outcome> {
  const f = new Flight(() => work(ms));
  flights.set(key, f);
  return f;
}

export default {
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const key = url.searchParams.get("key") ?? "k";
    const ms = Number(url.searchParams.get("ms") ?? "200");
    const flight = url.searchParams.get("mode") === "flight";
    switch (url.pathname) {
      case "/start":
        if (flight) startFlight(key, ms);
        else promises.set(key, work(ms));
        return new Response("started");
      case "/run": {
        const got = flight
          ? await shareWork(
              () => flights.get(key),
              () => startFlight(key, ms),
            )
          : await (promises.get(key) ?? promises.set(key, work(ms)).get(key)!);
        return Response.json(got);
      }
      case "/wait": {
        const got = flight
          ? await shareWork(
              () => flights.get(key),
              () => startFlight(key, ms),
            )
          : await promises.get(key)!;
        return Response.json(got);
      }
      case "/runs":
        return Response.json({ runs });
    }
    return new Response("not found", { status: 404 });
  },
};
