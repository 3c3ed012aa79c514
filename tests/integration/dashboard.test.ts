/**
 * The dashboard end to end in headless Chromium (Debian's `chromium`, driven by playwright-core):
 * the token exchange, the heat map showing the fixture's layers × experts, the hot experts
 * under a skewed load, replicas appearing in the placement, and a screenshot in bench-results/.
 * `.ci/run` installs chromium when it is missing; without it this suite is skipped with a warning.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { ADMIN_TOKEN_FOR_TESTS, ROOT, type LocalWorker } from "../../scripts/lib/local-worker";
import { FIXTURES, postJson, REPLICATION_VARS, startWithModels } from "./helpers";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  console.warn(
    `\n*** SKIPPING the dashboard browser test: no Chromium at ${CHROMIUM} ` +
      "(apt-get install -y chromium, or set CHROMIUM_PATH) ***\n",
  );
}

let w: LocalWorker;
let browser: Browser;

beforeAll(async () => {
  if (!haveChromium) return;
  w = await startWithModels(
    { tiny: join(FIXTURES, "mixtral-tiny") },
    // The skewed load below sends more than the shipped per-IP rate limit on purpose.
    { ...REPLICATION_VARS, RATE_LIMIT_ENABLED: "false" },
  );
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});
afterAll(async () => {
  await browser?.close();
  await w?.dispose();
});

interface Cell {
  layer: number;
  expert: number;
  load: number;
  replicas: number;
}
const cells = (page: Page): Promise<Cell[]> =>
  page.$$eval("#heatmap rect.cell", (rs) =>
    rs.map((r) => ({
      layer: Number(r.getAttribute("data-layer")),
      expert: Number(r.getAttribute("data-expert")),
      load: Number(r.getAttribute("data-load")),
      replicas: Number(r.getAttribute("data-replicas")),
    })),
  );
const updates = async (page: Page) => Number(await page.getAttribute("body", "data-updates"));
async function nextUpdate(page: Page): Promise<void> {
  const n = await updates(page);
  await page.waitForFunction(`Number(document.body.dataset.updates) > ${n}`, undefined, { timeout: 20_000 });
}

describe.skipIf(!haveChromium)("dashboard in a real browser", () => {
  it("asks for the token, then shows the heat map move and replicas appear under skewed load", async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const base = w.url.href.replace(/\/$/, "");
    // Without credentials: a login form, not the data.
    const login = await page.goto(`${base}/dashboard`);
    expect(login?.status()).toBe(401);
    expect(await page.locator("input[name=token]").count()).toBe(1);
    const wrong = await page.goto(`${base}/dashboard?token=wrong`);
    expect(wrong?.status()).toBe(401);
    expect((await w.fetch("/dashboard/data")).status).toBe(401);

    // Warm the model so there is a placement to show, then open the page with the token.
    expect((await postJson(w, "/v1/completions", { prompt: [1, 2, 3], max_tokens: 2, temperature: 0 })).status).toBe(
      200,
    );
    await page.goto(`${base}/dashboard?token=${ADMIN_TOKEN_FOR_TESTS}`);
    expect(new URL(page.url()).search).toBe(""); // the token left the address bar
    await page.waitForSelector("#heatmap rect.cell");
    await nextUpdate(page);
    const first = await cells(page);
    expect(first).toHaveLength(2 * 8); // mixtral-tiny: 2 MoE layers × 8 experts
    expect(new Set(first.map((c) => c.layer))).toEqual(new Set([0, 1]));
    expect(await page.locator("#placement .inst").count()).toBe(4);

    // Skewed load: one repeated token routes most positions to the same experts per layer.
    let stop = false;
    const statuses = new Map<number, number>();
    const load = (async () => {
      while (!stop) {
        const r = await postJson(w, "/v1/completions", {
          prompt: new Array(24).fill(42),
          max_tokens: 4,
          temperature: 0,
        });
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      }
    })();
    let hot: Cell[] = first;
    let replicated = false;
    try {
      for (let i = 0; i < 40; i++) {
        await nextUpdate(page);
        hot = await cells(page);
        replicated = hot.some((c) => c.replicas > 1);
        const moved = hot.some((c, i) => c.load !== first[i].load);
        if (moved && replicated && (await page.locator("#replans li").count()) > 0) break;
      }
    } finally {
      stop = true;
      await load;
    }
    expect([...statuses.keys()]).toEqual([200]); // the load was served, not refused
    // The heat map changed, and within each layer the load sits on a few experts (top-2 of 8).
    expect(hot.map((c) => c.load)).not.toEqual(first.map((c) => c.load));
    for (const layer of [0, 1]) {
      const row = hot
        .filter((c) => c.layer === layer)
        .map((c) => c.load)
        .sort((a, b) => b - a);
      const total = row.reduce((a, b) => a + b, 0);
      expect(total).toBeGreaterThan(0);
      expect((row[0] + row[1]) / total).toBeGreaterThan(0.5);
    }
    // Replicas of hot experts appear in the heat map and as highlighted chips in the placement.
    expect(replicated).toBe(true);
    expect(await page.locator("#placement .chip.rep").count()).toBeGreaterThan(0);
    expect(await page.locator("#replans li").count()).toBeGreaterThan(0);
    expect(await page.textContent("#k-tps")).not.toBe("–");

    mkdirSync(join(ROOT, "bench-results"), { recursive: true });
    const shot = join(ROOT, "bench-results", "dashboard.png");
    await page.screenshot({ path: shot, fullPage: true });
    expect(existsSync(shot)).toBe(true);
    await page.close();
  });
});
