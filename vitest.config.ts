import { cloudflareTest } from "@cloudflare/vitest-plugin";
import { defineConfig } from "vitest/config";

// Two kinds of tests: `node` (pure code, kernels, and integration tests that drive the bundled
// Worker in real workerd through wrangler's test harness) and `workerd` (the kernel contract
// suite run inside the Workers runtime itself, whose V8 differs from Node's).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: "node",
          include: ["tests/unit/**/*.test.ts", "tests/bench-model/**/*.test.ts", "tests/integration/**/*.test.ts"],
          environment: "node",
          testTimeout: 120_000,
          hookTimeout: 180_000,
        },
      },
      {
        plugins: [cloudflareTest({ wrangler: { configPath: "./tests/unit/kernels/workerd/wrangler.toml" } })],
        test: {
          name: "workerd",
          include: ["tests/unit/kernels/workerd/*.spec.ts"],
          testTimeout: 120_000,
        },
      },
      {
        plugins: [cloudflareTest({ wrangler: { configPath: "./tests/workerd/shared-work/wrangler.toml" } })],
        test: {
          name: "workerd-shared-work",
          include: ["tests/workerd/shared-work/*.spec.ts"],
          testTimeout: 60_000,
        },
      },
    ],
  },
});
