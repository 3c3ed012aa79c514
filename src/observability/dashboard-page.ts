/**
 * @module The dashboard page: one HTML document with inline CSS and a small script that polls
 * /dashboard/data every second and draws plain SVG/DOM — the heat map (layers × experts), the
 * placement (instances, their replicas, memory vs budget), tokens/s, TTFT and balance over time,
 * and the re-plan log. No framework and no build step: the Worker serves this string as is.
 * Cells carry data-layer / data-expert / data-load attributes so tests can read the heat map.
 */

const STYLE = `
:root { color-scheme: light dark; --bg:#0f1419; --fg:#e6e6e6; --mut:#8a96a3; --card:#182029;
  --line:#2a3541; --acc:#ff8a3d; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--fg); }
header { display:flex; gap:24px; align-items:baseline; padding:12px 20px; border-bottom:1px solid var(--line);
  flex-wrap:wrap; }
header h1 { font-size:18px; margin:0; }
.kpi { display:flex; flex-direction:column; } .kpi b { font-size:20px; } .kpi span { color:var(--mut); font-size:12px; }
main { display:grid; grid-template-columns: minmax(420px, 1.2fr) minmax(360px, 1fr); gap:16px; padding:16px 20px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
section h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--mut); margin:0 0 8px; }
svg text { fill:var(--mut); font-size:11px; }
.inst { border-top:1px solid var(--line); padding:6px 0; } .inst:first-of-type { border-top:0; }
.bar { height:8px; background:#2a3541; border-radius:4px; overflow:hidden; margin:4px 0; }
.bar i { display:block; height:100%; background:#3d9cff; }
.chip { display:inline-block; padding:0 5px; margin:1px; border-radius:3px; background:#25303b;
  font:11px ui-monospace, monospace; }
.chip.rep { background:var(--acc); color:#111; }
ol#replans { margin:0; padding-left:32px; max-height:220px; overflow:auto; font:12px ui-monospace, monospace; }
.charts { display:grid; grid-template-columns:repeat(3, 1fr); gap:10px; }
.charts div span { color:var(--mut); font-size:12px; }
.err { color:#ff6b6b; } select { background:var(--card); color:var(--fg); border:1px solid var(--line); }
`;

const SCRIPT = `
const $ = (id) => document.getElementById(id);
const NS = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(location.search);
let model = params.get("model") || "";
const balanceHistory = [];
function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}
function heat(x) {
  // 0 → dark blue-grey, 1 → hot orange-red
  const a = [37, 48, 59], b = [255, 138, 61], c = [230, 40, 40];
  const [p, q, t] = x < 0.6 ? [a, b, x / 0.6] : [b, c, (x - 0.6) / 0.4];
  return "rgb(" + p.map((v, i) => Math.round(v + (q[i] - v) * t)).join(",") + ")";
}
function fmtBytes(n) { return n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : (n / 1024).toFixed(1) + " KiB"; }
function drawHeat(d) {
  const svg = $("heatmap");
  svg.replaceChildren();
  const cw = Math.max(14, Math.min(44, Math.floor(640 / Math.max(1, d.nExperts))));
  const ch = Math.max(12, Math.min(34, Math.floor(420 / Math.max(1, d.layers.length))));
  const left = 44, top = 20;
  svg.setAttribute("width", left + cw * d.nExperts + 10);
  svg.setAttribute("height", top + ch * d.layers.length + 10);
  const max = Math.max(1e-9, ...d.loads.flat());
  for (let e = 0; e < d.nExperts; e++) {
    if (d.nExperts > 32 && e % 8 !== 0) continue; // label every 8th column of wide models
    svg.append(el("svg:text", { x: left + e * cw + cw / 2, y: 14, "text-anchor": "middle" }, "E" + e));
  }
  d.layers.forEach((layer, r) => {
    svg.append(el("svg:text", { x: left - 6, y: top + r * ch + ch / 2 + 4, "text-anchor": "end" }, "L" + layer));
    for (let e = 0; e < d.nExperts; e++) {
      const load = d.loads[r][e], reps = d.replicas[r]?.[e] ?? 0;
      const rect = el("svg:rect", { class: "cell", x: left + e * cw, y: top + r * ch, width: cw - 2, height: ch - 2,
        rx: 2, fill: heat(load / max), "data-layer": layer, "data-expert": e, "data-load": load.toFixed(3),
        "data-replicas": reps });
      const served = d.served[r]?.[e] ?? 0;
      rect.append(el("svg:title", {}, "layer " + layer + ", expert " + e + ": " + load.toFixed(1) + " tokens/window, "
        + reps + " replica(s), " + served + " tokens served"));
      svg.append(rect);
      if (reps > 1) {
        const at = { x: left + e * cw + cw / 2 - 1, y: top + r * ch + ch / 2 + 3 };
        svg.append(el("svg:text", { ...at, "text-anchor": "middle", style: "fill:#111;font-weight:700" }, "×" + reps));
      }
    }
  });
}
function drawPlacement(d) {
  const box = $("placement");
  box.replaceChildren();
  if (!d.placement) { box.append(el("p", {}, "No placement yet: send a request to " + d.model + ".")); return; }
  const counts = {};
  for (const inst of d.placement.instances) for (const k of inst.experts) counts[k] = (counts[k] || 0) + 1;
  for (const inst of d.placement.instances) {
    const div = el("div", { class: "inst", "data-instance": inst.name });
    const pct = inst.budgetBytes ? Math.min(100, (100 * inst.bytesLoaded) / inst.budgetBytes) : 0;
    div.append(el("div", {}, inst.name + (inst.up ? "" : " (not answering)") + " · " + fmtBytes(inst.bytesLoaded)
      + " of " + fmtBytes(inst.budgetBytes) + " · " + inst.calls + " calls"));
    const bar = el("div", { class: "bar" });
    bar.append(el("i", { style: "width:" + pct.toFixed(1) + "%" }));
    div.append(bar);
    for (const k of inst.experts) div.append(el("span", { class: "chip" + (counts[k] > 1 ? " rep" : "") }, k));
    box.append(div);
  }
}
function spark(id, values, fmt) {
  const svg = $(id), w = 220, h = 60;
  svg.replaceChildren();
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  const vs = values.slice(-60), max = Math.max(1e-9, ...vs);
  const x = (i) => (vs.length < 2 ? 0 : (i * w) / (vs.length - 1)).toFixed(1);
  const pts = vs.map((v, i) => x(i) + "," + (h - 4 - (v / max) * (h - 8)).toFixed(1));
  svg.append(el("svg:polyline", { points: pts.join(" "), fill: "none", stroke: "#ff8a3d", "stroke-width": 2 }));
  $(id + "-now").textContent = vs.length ? fmt(vs[vs.length - 1]) : "–";
}
function drawCharts(d) {
  const sec = d.slotMs / 1000, tl = d.timeline;
  const tps = tl.map((s) => s.completionTokens / sec);
  const ttft = tl.map((s) => (s.ttftCount ? (1000 * s.ttftSum) / s.ttftCount : 0));
  if (d.balance.length) balanceHistory.push(Math.max(...d.balance));
  if (balanceHistory.length > 120) balanceHistory.shift();
  spark("tps", tps, (v) => v.toFixed(1) + " tok/s");
  spark("ttft", ttft, (v) => v.toFixed(0) + " ms");
  spark("bal", balanceHistory, (v) => v.toFixed(2) + " max/mean");
  const recent = tl.filter((s) => s.t >= d.at - 10000);
  $("k-tps").textContent = (recent.reduce((a, s) => a + s.completionTokens, 0) / 10).toFixed(1);
  const tc = recent.reduce((a, s) => a + s.ttftCount, 0);
  $("k-ttft").textContent = tc ? ((1000 * recent.reduce((a, s) => a + s.ttftSum, 0)) / tc).toFixed(0) + " ms" : "–";
}
function drawReplans(d) {
  const ol = $("replans");
  ol.replaceChildren();
  // Alarm re-plans that changed nothing are most reports; list the ones that did something.
  const quiet = d.replans.filter((r) => Object.keys(r.ops).length === 0 && !r.failedLoads).length;
  $("replans-quiet").textContent = quiet ? "(" + quiet + " of the last " + d.replans.length + " changed nothing)" : "";
  for (const r of [...d.replans].reverse()) {
    if (Object.keys(r.ops).length === 0 && !r.failedLoads) continue;
    const ops = Object.entries(r.ops).map(([k, v]) => v + " " + k).join(", ") || "no change";
    const failed = r.failedLoads ? " (" + r.failedLoads + " failed loads)" : "";
    ol.append(el("li", { class: "replan" }, new Date(r.at).toLocaleTimeString() + " " + r.trigger + " v" + r.fromVersion
      + "→v" + r.toVersion + " " + r.reason + ": " + ops + failed));
  }
}
function drawModels(d) {
  const sel = $("model");
  const ids = [...new Set([d.model, ...d.models])];
  if (sel.options.length !== ids.length) { sel.replaceChildren(...ids.map((m) => el("option", { value: m }, m))); }
  sel.value = d.model;
}
async function tick() {
  try {
    const query = model ? "?model=" + encodeURIComponent(model) : "";
    const res = await fetch("/dashboard/data" + query, { credentials: "same-origin", cache: "no-store" });
    if (!res.ok) throw new Error("HTTP " + res.status + ": " + (await res.text()).slice(0, 200));
    const d = await res.json();
    model = d.model;
    drawModels(d); drawHeat(d); drawPlacement(d); drawCharts(d); drawReplans(d);
    $("k-version").textContent = d.placement ? "v" + d.placement.version : "–";
    $("k-instances").textContent = d.placement ? d.placement.instances.length : "–";
    $("k-balance").textContent = d.balance.length ? Math.max(...d.balance).toFixed(2) : "–";
    $("status").textContent = "updated " + new Date(d.at).toLocaleTimeString() + " · " + d.scrape.rpcs + " RPCs, "
      + d.scrape.ms + " ms";
    $("status").className = "";
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (err) {
    $("status").textContent = String(err && err.message ? err.message : err);
    $("status").className = "err";
  }
  setTimeout(tick, 1000);
}
$("model").addEventListener("change", (e) => { model = e.target.value; balanceHistory.length = 0; });
tick();
`;

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge-moe · experts at work</title><style>${STYLE}</style></head>
<body data-updates="0">
<header><h1>edge-moe</h1><select id="model" aria-label="model"></select>
<div class="kpi"><b id="k-tps">–</b><span>tokens/s (10 s)</span></div>
<div class="kpi"><b id="k-ttft">–</b><span>mean TTFT (10 s)</span></div>
<div class="kpi"><b id="k-balance">–</b><span>worst layer max/mean</span></div>
<div class="kpi"><b id="k-version">–</b><span>placement</span></div>
<div class="kpi"><b id="k-instances">–</b><span>instances</span></div>
<span id="status">loading…</span></header>
<main>
<section><h2>Expert load (smoothed routed tokens per window; ×N = replicas)</h2>
<svg id="heatmap" role="img" aria-label="expert heat map"></svg></section>
<section><h2>Placement</h2><div id="placement"></div></section>
<section style="grid-column:1 / -1"><h2>Over time</h2><div class="charts">
<div><span>tokens/s · <b id="tps-now">–</b></span><svg id="tps"></svg></div>
<div><span>TTFT · <b id="ttft-now">–</b></span><svg id="ttft"></svg></div>
<div><span>balance · <b id="bal-now">–</b></span><svg id="bal"></svg></div></div></section>
<section style="grid-column:1 / -1"><h2>Re-plans (newest first) <span id="replans-quiet"></span></h2>
<ol id="replans"></ol></section>
</main><script>${SCRIPT}</script></body></html>`;

export const LOGIN_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge-moe dashboard</title>
<style>${STYLE} form{padding:40px}</style></head>
<body><form method="get" action="/dashboard"><h1>edge-moe dashboard</h1><!--error-->
<p>Enter the deployment's ADMIN_TOKEN (locally: <code>.dev.vars</code>, written by <code>npm start</code>).</p>
<input type="password" name="token" autocomplete="off" autofocus> <button>Open</button></form></body></html>`;
