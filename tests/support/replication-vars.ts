/**
 * Vars for the tests of the replication mechanism on mixtral-tiny: 4–6 ExpertHosts, re-plans every
 * 300 ms, and balance alone deciding — one local client is a load at which the latency model
 * (tests/unit/coordinator/latency.test.ts) copies nothing. Shared by the workerd integration tests
 * and the Coordinator's unit tests.
 */
export const REPLICATION_VARS: Readonly<Record<string, string>> = {
  MIN_EXPERT_HOSTS: "4",
  MAX_EXPERT_HOSTS: "6",
  REPLAN_INTERVAL_MS: "300",
  MAX_COPIES_PER_REPLAN: "4",
  REPLAN_THRESHOLD: "0.1",
  PLACEMENT_RPC_MS: "0",
  PLACEMENT_ROW_MS_PER_MIB: "0",
  PLACEMENT_PASS_MS_PER_MIB: "0",
  DEFAULT_MODEL: "tiny",
  // The tests' skewed load repeats one prompt as fast as it is served: prefix sharing would copy it
  // from a kept donor (the load would come from decode rows only) and the requests would outrun the
  // per-client rate limit. Neither is what these tests are about.
  PREFIX_SHARING: "off",
  RATE_LIMIT_ENABLED: "false",
};
