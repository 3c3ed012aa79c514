/** @module Wiring only: the Worker's fetch handler and the Durable Object classes. */
import { app } from "./app";

export { ExpertHost } from "./experts/expert-host";
export { Coordinator } from "./coordinator/coordinator";
export { MetricsHub } from "./observability/metrics-hub";
export { HeadHost } from "./head/head-host";
export { StageHost } from "./stages/stage-host";

export default {
  fetch: app.fetch,
} satisfies ExportedHandler<Env>;
