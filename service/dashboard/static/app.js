// ALTO dashboard: our own small script. It reads the public /v1 API with the user's
// bearer token and draws the charts with plotly.js, which the service itself serves
// (from plotly's Python package), so it works offline. Pages refresh every few
// seconds while anything runs.
"use strict";

const PAGE = document.body.dataset.page;
const OBJECT_ID = document.body.dataset.id;
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const POLL_MS = 2000;
const COLORS = ["#1f6fb2", "#d35400", "#1b8a5a", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#b7791f"];
const M = {
  loss: "train/loss", val: "val/loss", tps: "train/tokens_per_s", step: "train/step_time_s",
  rss: "mem/peak_rss_bytes", alloc: "mem/peak_allocated_bytes", reserved: "mem/peak_reserved_bytes",
  state: "optim/state_bytes", params: "model/params", ppl: "val/ppl", optstep: "optim/step_time_s",
};

// ------------------------------------------------------------------ token and API

class AuthError extends Error {}
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function takeToken() {
  const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (m) {
    localStorage.setItem("alto_token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return localStorage.getItem("alto_token");
}

let TOKEN = takeToken();

async function fetchOk(path, accept) {
  const headers = { Accept: accept };
  if (TOKEN) headers.Authorization = "Bearer " + TOKEN;
  const r = await fetch(path, { headers });
  if (r.status === 401) throw new AuthError("the token was not accepted");
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { const body = await r.json(); if (body.message) msg = r.status + " " + body.message; } catch (e) { /* not JSON */ }
    throw new ApiError(r.status, msg);
  }
  return r;
}
async function api(path) { return (await fetchOk(path, "application/json")).json(); }
// an image the API serves: the token goes in a header, which an <img src> cannot send
async function apiBlob(path, accept) { return (await fetchOk(path, accept)).blob(); }

function showLogin(message) {
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

document.getElementById("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = document.getElementById("login-token").value.trim();
  if (!value) return;
  localStorage.setItem("alto_token", value);
  TOKEN = value;
  document.getElementById("login").hidden = true;
  start();
});

function showError(err) {
  const el = document.getElementById("error");
  if (!err) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = String(err.message || err);
}

// ------------------------------------------------------------------ formatting

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function fmtNum(v, digits = 4) {
  if (v === null || v === undefined) return "-";
  if (Number.isNaN(v)) return "nan";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}
function fmtSigned(v, digits = 3, suffix = "") {
  if (v === null || v === undefined) return "-";
  return (v >= 0 ? "+" : "") + fmtNum(v, digits) + suffix;
}
function fmtRate(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return fmtNum(v);
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return v.toFixed(0);
}
function fmtRatio(v) { return v === null || v === undefined ? "-" : v.toFixed(2) + "x"; }
function fmtBytes(v) {
  if (v === null || v === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let x = v;
  while (Math.abs(x) >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  return i === 0 ? x.toFixed(0) + " B" : x.toFixed(1) + " " + units[i];
}
function fmtMeanStd(mean, std) {
  if (mean === null || mean === undefined) return "-";
  if (!std) return fmtNum(mean);
  return fmtNum(mean) + " ± " + fmtNum(std, 2);
}
function fmtDuration(s) {
  if (s === null || s === undefined) return "-";
  if (s < 60) return s.toFixed(1) + "s";
  const m = Math.floor(s / 60); const sec = Math.round(s % 60);
  if (m < 60) return m + "m" + String(sec).padStart(2, "0") + "s";
  return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
}
function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }
function shortId(id) { return `<span title="${esc(id)}">${esc(String(id).slice(0, 8))}</span>`; }
function statusBadge(s) { return `<span class="status ${esc(s)}" data-status="${esc(s)}">${esc(s)}</span>`; }
function jobSteps(job) { return job.spec && job.spec.training ? job.spec.training.steps : null; }
function latest(job, name) { return job.latest_metrics ? job.latest_metrics[name] : undefined; }
function cell(field, raw, text, cls = "num") {
  const value = raw === null || raw === undefined ? "" : String(raw);
  return `<td class="${cls}" data-field="${esc(field)}" data-value="${esc(value)}">${esc(text)}</td>`;
}

// ------------------------------------------------------------------ charts (plotly.js)

// plotly.js is the copy plotly's Python package installs, served by this service under
// a versioned URL (index.html's data-plotly); it is loaded only by the pages that chart.
let plotlyLoading = null;
function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!plotlyLoading) {
    const src = document.body.dataset.plotly;
    plotlyLoading = new Promise((resolve, reject) => {
      if (!src) { reject(new Error("charts unavailable: the service has no plotly package")); return; }
      const script = document.createElement("script");
      script.src = src;
      script.addEventListener("load", () => resolve(window.Plotly));
      script.addEventListener("error", () => { plotlyLoading = null; reject(new Error(`charts unavailable: ${src} did not load`)); });
      document.head.append(script);
    });
  }
  return plotlyLoading;
}

// no logo link and no "share" button: that one would upload the chart to Plotly's cloud
const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d", "sendChartToCloud"] };
const LOG_KEY = "alto_log_loss";
let logLoss = localStorage.getItem(LOG_KEY) === "1";
const LOSS_CHARTS = new Set();  // ids of the charts whose y axis the log toggle switches

function hexToRgba(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
}

// plotly reads a small HTML subset in text (<b>, <br>, <a>): API strings go in escaped
function plotText(s) { return esc(s); }

function chartLayout(title, yTitle, opts = {}) {
  const layout = {
    title: { text: plotText(title), font: { size: 14 }, x: 0.01, xanchor: "left" },
    height: opts.height || 360,
    margin: { l: 64, r: 16, t: 40, b: 44 },
    xaxis: { title: { text: opts.xLabel || "step" }, zeroline: false },
    yaxis: { title: { text: plotText(yTitle || "") }, zeroline: false, type: opts.log ? "log" : "linear" },
    hovermode: "x unified",
    legend: { orientation: "h", x: 0, y: -0.2, yanchor: "top", font: { size: 11 } },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    // a live refresh redraws with new data; the user's zoom and hidden traces stay
    uirevision: opts.uirevision || "keep",
    annotations: [],
  };
  if (opts.empty) {
    layout.annotations.push({ text: "no data yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: "#5b6578" } });
    layout.xaxis.visible = false;
    layout.yaxis.visible = false;
  }
  return layout;
}

// draws (or redraws in place) one chart; `loss` charts follow the log-scale toggle
async function drawChart(id, traces, layout, loss = false) {
  const div = document.getElementById(id);
  if (!div) return;
  let Plotly;
  try {
    Plotly = await loadPlotly();
  } catch (err) {
    div.dataset.state = "error";
    div.textContent = String(err.message || err);
    return;
  }
  if (loss) {
    LOSS_CHARTS.add(id);
    layout.yaxis.type = logLoss ? "log" : "linear";
  }
  await Plotly.react(div, traces, layout, PLOT_CONFIG);
  if (!div.dataset.zoomed) {
    div.dataset.zoomed = "no";
    div.on("plotly_relayout", (ev) => {
      if ("xaxis.range[0]" in ev || "xaxis.range" in ev) div.dataset.zoomed = "yes";
      else if (ev["xaxis.autorange"]) div.dataset.zoomed = "no";
    });
  }
  if (loss) div.dataset.yaxis = layout.yaxis.type;
  div.dataset.state = "yes";
}

// the "log-scale loss" checkbox; its state is kept across pages and reloads
function logToggleEl() {
  const box = el("input", { type: "checkbox", id: "log-loss", checked: logLoss });
  box.addEventListener("change", async () => {
    logLoss = box.checked;
    localStorage.setItem(LOG_KEY, logLoss ? "1" : "0");
    const Plotly = await loadPlotly();
    for (const id of LOSS_CHARTS) {
      const div = document.getElementById(id);
      if (!div || !div.data) continue;
      await Plotly.relayout(div, { "yaxis.type": logLoss ? "log" : "linear", "yaxis.autorange": true });
      div.dataset.yaxis = div.layout.yaxis.type;
    }
  });
  return el("label", { class: "toggle" }, box, " log-scale loss");
}

// a line per metric of one job: [{label, color, steps, values, markers, scale}]
function lineTraces(lines) {
  return lines.filter((l) => l.steps.length).map((l) => ({
    type: "scatter",
    mode: l.markers ? "lines+markers" : "lines",
    name: plotText(l.label),
    x: l.steps,
    y: l.values.map((v) => (v === null || v === undefined ? null : v * (l.scale || 1))),
    line: { color: l.color, width: 1.8 },
    marker: { size: 6 },
    hovertemplate: "%{y:.4g}",
    meta: { metric: l.metric, role: "line" },
  }));
}

// an arm's mean over seeds with its band (mean ± std, from /v1/comparisons/{id}/curves)
function bandTraces(arm, curve, color, markers) {
  const label = `${arm}${curve.n_seeds > 1 ? ` (mean ± std of ${curve.n_seeds} seeds)` : ""}`;
  const traces = [];
  if (curve.n_seeds > 1) {
    const band = { type: "scatter", mode: "lines", x: curve.steps, line: { width: 0, color }, hoverinfo: "skip", showlegend: false, legendgroup: arm };
    traces.push({ ...band, y: curve.upper, meta: { arm, metric: curve.metric, role: "upper" } });
    traces.push({ ...band, y: curve.lower, fill: "tonexty", fillcolor: hexToRgba(color, 0.18), meta: { arm, metric: curve.metric, role: "lower" } });
  }
  traces.push({
    type: "scatter",
    mode: markers && curve.steps.length <= 60 ? "lines+markers" : "lines",
    name: plotText(label),
    legendgroup: arm,
    x: curve.steps,
    y: curve.mean,
    customdata: curve.steps.map((_, i) => [curve.lower[i], curve.upper[i], curve.n[i]]),
    hovertemplate: curve.n_seeds > 1 ? "%{y:.4g} (%{customdata[0]:.4g} to %{customdata[1]:.4g}, %{customdata[2]} seeds)" : "%{y:.4g}",
    line: { color, width: 2 },
    marker: { size: 6 },
    meta: { arm, metric: curve.metric, role: "mean" },
  });
  return traces;
}

// bars: [{label, value, color}]
function barTraces(bars, fmt) {
  const shown = bars.filter((b) => Number.isFinite(b.value));
  if (!shown.length) return [];
  return [{
    type: "bar",
    orientation: "h",
    y: shown.map((b) => plotText(b.label)),
    x: shown.map((b) => b.value),
    text: shown.map((b) => fmt(b.value)),
    textposition: "outside",
    cliponaxis: false,
    marker: { color: shown.map((b) => b.color) },
    hovertemplate: "%{y}: %{text}<extra></extra>",
    meta: { role: "bars", labels: shown.map((b) => b.label) },
  }];
}
function barLayout(title, traces) {
  const layout = chartLayout(title, "", { empty: !traces.length, height: 90 + 34 * (traces.length ? traces[0].y.length : 1) });
  layout.xaxis.title.text = "";
  layout.xaxis.zeroline = true;
  layout.yaxis.type = "category";
  layout.yaxis.autorange = "reversed";
  layout.yaxis.automargin = true;
  layout.hovermode = "closest";
  layout.showlegend = false;
  layout.margin = { l: 20, r: 60, t: 40, b: 30 };
  return layout;
}

function seriesOf(history, name) {
  return (history.series || []).find((s) => s.name === name);
}
function line(history, name, label, color, extra = {}) {
  const s = seriesOf(history, name);
  return { label, color, metric: name, steps: s ? s.steps : [], values: s ? s.values : [], ...extra };
}

// ------------------------------------------------------------------ live refresh

// The next refresh waits POLL_MS, or five times as long as the last one took when that
// is longer: a long run's history costs the server about a second to read, and an open
// page must not keep a core busy (at most a sixth of the server's time per page).
const LOAD_FACTOR = 5;
let timer = null;
let refreshStarted = performance.now();
function schedule(fn, live) {
  clearTimeout(timer);
  document.getElementById("live").textContent = live ? "● live" : "";
  const took = performance.now() - refreshStarted;
  if (live) timer = setTimeout(fn, Math.max(POLL_MS, LOAD_FACTOR * took));
}

async function guarded(fn) {
  refreshStarted = performance.now();
  try {
    await fn();
    showError(null);
  } catch (err) {
    if (err instanceof AuthError) { showLogin(err.message); schedule(null, false); return; }
    showError(err);
    // a 4xx will not fix itself (unknown id, bad filter); network trouble and 5xx may
    const transient = !(err instanceof ApiError) || err.status >= 500;
    schedule(() => guarded(fn), transient);
  }
}

// ------------------------------------------------------------------ jobs page

let jobsShown = 50;

async function renderJobs() {
  const content = document.getElementById("content");
  if (!content.querySelector("#jobs-table")) {
    content.innerHTML = `<h1>Jobs</h1>
      <div class="toolbar"><label>Status <select id="status-filter"><option value="">all</option>
      ${["PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"].map((s) => `<option>${s}</option>`).join("")}
      </select></label><span id="jobs-count" class="meta"></span></div>
      <div class="card scroll"><table id="jobs-table"><thead><tr><th>id</th><th>name</th><th>status</th><th>comparison</th>
      <th class="num metric-col">step</th><th class="num metric-col">loss</th><th class="num metric-col">val loss</th><th class="num metric-col">tokens/s</th><th>owner</th><th>created</th></tr></thead>
      <tbody></tbody></table><div class="toolbar" style="margin-top:.6rem"><button id="more" hidden>Load more</button></div></div>`;
    content.querySelector("#status-filter").addEventListener("change", () => { jobsShown = 50; guarded(renderJobs); });
    content.querySelector("#more").addEventListener("click", () => { jobsShown += 50; guarded(renderJobs); });
  }
  const status = content.querySelector("#status-filter").value;
  const jobs = [];
  let cursor = null, more = false;
  while (jobs.length < jobsShown) {
    const q = new URLSearchParams({ limit: String(Math.min(100, jobsShown - jobs.length)) });
    if (status) q.set("status", status);
    if (cursor) q.set("cursor", cursor);
    const page = await api("/v1/jobs?" + q);
    jobs.push(...page.items);
    cursor = page.next_cursor;
    more = Boolean(cursor);
    if (!cursor || !page.items.length) break;
  }
  // the list carries latest metrics when the service includes them; else hide those columns
  const withMetrics = jobs.some((j) => j.latest_metrics && Object.keys(j.latest_metrics).length);
  content.querySelectorAll("#jobs-table .metric-col").forEach((th) => { th.hidden = !withMetrics; });
  const rows = jobs.map((j) => {
    const loss = latest(j, M.loss), val = latest(j, M.val), tps = latest(j, M.tps);
    const total = jobSteps(j);
    const step = loss ? (total ? `${loss.step}/${total}` : String(loss.step)) : "-";
    const comp = j.comparison_id ? `<a href="/comparisons/${esc(j.comparison_id)}">${esc(j.arm || "")} s${esc(j.seed ?? "")}</a>` : "";
    const metricCells = withMetrics ? `<td class="num">${esc(step)}</td>
      ${cell("train/loss", loss ? loss.value : null, fmtNum(loss ? loss.value : null))}
      ${cell("val/loss", val ? val.value : null, fmtNum(val ? val.value : null))}
      ${cell("train/tokens_per_s", tps ? tps.value : null, fmtRate(tps ? tps.value : null))}` : "";
    return `<tr data-job="${esc(j.id)}"><td><a href="/jobs/${esc(j.id)}">${shortId(j.id)}</a></td><td>${esc(j.name)}</td>
      <td>${statusBadge(j.status)}</td><td>${comp}</td>${metricCells}
      <td>${esc(j.owner)}</td><td>${esc(fmtTime(j.created_at))}</td></tr>`;
  });
  content.querySelector("#jobs-table tbody").innerHTML = rows.join("") || `<tr><td colspan="10" class="empty">no jobs yet: submit one with <code>alto submit SPEC</code></td></tr>`;
  content.querySelector("#more").hidden = !more;
  content.querySelector("#jobs-count").textContent = `${jobs.length} job(s)${more ? " shown" : ""}`;
  schedule(() => guarded(renderJobs), jobs.some((j) => !TERMINAL.has(j.status)));
}

// ------------------------------------------------------------------ comparisons page

async function renderComparisons() {
  const page = await api("/v1/comparisons?limit=100");
  const rows = page.items.map((c) => {
    const arms = [c.baseline, ...c.arms.filter((a) => a !== c.baseline)];
    return `<tr data-comparison="${esc(c.id)}"><td><a href="/comparisons/${esc(c.id)}">${shortId(c.id)}</a></td>
      <td>${esc(c.name)}</td><td>${statusBadge(c.status)}</td><td>${esc(arms.join(", "))}</td>
      <td class="num">${esc(c.seeds.length)}</td><td class="num">${esc(c.jobs)}</td>
      <td>${esc(c.owner)}</td><td>${esc(fmtTime(c.created_at))}</td></tr>`;
  });
  document.getElementById("content").innerHTML = `<h1>Comparisons</h1>
    <div class="card scroll"><table id="comparisons-table"><thead><tr><th>id</th><th>name</th><th>status</th>
    <th>arms (baseline first)</th><th class="num">seeds</th><th class="num">jobs</th><th>owner</th><th>created</th></tr></thead>
    <tbody>${rows.join("") || `<tr><td colspan="8" class="empty">no comparisons yet: start one with <code>alto compare SPEC</code></td></tr>`}</tbody></table>
    ${page.next_cursor ? `<p class="meta">the newest 100 are shown; <code>alto comparisons</code> lists them all</p>` : ""}</div>`;
  schedule(() => guarded(renderComparisons), page.items.some((c) => !TERMINAL.has(c.status)));
}

// ------------------------------------------------------------------ job page

function kpi(label, value, field) {
  return `<div class="kpi"><div class="label">${esc(label)}</div><div class="value" data-field="${esc(field || label)}">${esc(value)}</div></div>`;
}

// The chart pages build their frame once and then refresh its parts: the charts are
// redrawn in place (Plotly.react), so a zoom or a hidden trace survives a live refresh.
function chartFrame(content, key, build) {
  if (content.dataset.frame !== key) {
    content.dataset.frame = key;
    content.replaceChildren();
    LOSS_CHARTS.clear();
    build(content);
  }
}
function chartCard(id) { return el("div", { class: "card" }, el("div", { class: "chart", id })); }

async function renderJob() {
  const id = OBJECT_ID;
  const [job, hist] = await Promise.all([
    api(`/v1/jobs/${encodeURIComponent(id)}`),
    api(`/v1/jobs/${encodeURIComponent(id)}/metrics?max_points=1000`),
  ]);
  document.title = `${job.name} · ALTO`;
  const loss = latest(job, M.loss), val = latest(job, M.val), tps = latest(job, M.tps);
  const rss = latest(job, M.rss), alloc = latest(job, M.alloc), state = latest(job, M.state), params = latest(job, M.params);
  const total = jobSteps(job);
  const opt = job.spec && job.spec.optimizer ? job.spec.optimizer.name : "-";
  const comp = job.comparison_id ? ` · comparison <a href="/comparisons/${esc(job.comparison_id)}">${esc(job.comparison_id)}</a> (arm ${esc(job.arm)}, seed ${esc(job.seed)})` : "";
  const elapsed = job.started_at ? ((job.finished_at ? new Date(job.finished_at) : new Date()) - new Date(job.started_at)) / 1000 : null;
  const content = document.getElementById("content");
  chartFrame(content, "job", (c) => c.append(
    el("div", { id: "job-head" }),
    el("div", { class: "toolbar" }, logToggleEl()),
    el("div", { class: "grid" }, chartCard("chart-loss"), chartCard("chart-tps"), chartCard("chart-mem"), chartCard("chart-time"))));
  content.querySelector("#job-head").innerHTML = `
    <h1>${esc(job.name)} ${statusBadge(job.status)}</h1>
    <p class="meta">job ${esc(job.id)} · optimizer ${esc(opt)} · owner ${esc(job.owner)} · created ${esc(fmtTime(job.created_at))}${comp}${hist.downsampled ? " · curves downsampled" : ""}</p>
    ${job.status_reason ? `<p class="reason">${esc(job.status_reason)}</p>` : ""}
    <div class="kpis">
      ${kpi("step", loss ? `${loss.step}${total ? "/" + total : ""}` : "-", "step")}
      ${kpi("train loss", fmtNum(loss ? loss.value : null), M.loss)}
      ${kpi("val loss", fmtNum(val ? val.value : null), M.val)}
      ${kpi("tokens/s", fmtRate(tps ? tps.value : null), M.tps)}
      ${kpi("peak memory", fmtBytes(alloc ? alloc.value : rss ? rss.value : null), "mem")}
      ${kpi("optimizer state", fmtBytes(state ? state.value : null), M.state)}
      ${kpi("parameters", fmtNum(params ? params.value : null, 4), M.params)}
      ${kpi("elapsed", fmtDuration(elapsed), "elapsed")}
    </div>`;
  const MiB = 1 / 1048576;
  const charts = [
    ["chart-loss", "loss", "loss (nats/token)", [
      line(hist, M.loss, "train loss", COLORS[0]),
      line(hist, M.val, "validation loss", COLORS[1], { markers: true }),
    ], true],
    ["chart-tps", "throughput", "tokens/s", [line(hist, M.tps, "tokens/s", COLORS[2])], false],
    ["chart-mem", "memory", "MiB", [
      line(hist, M.rss, "peak RSS", COLORS[0], { markers: true, scale: MiB }),
      line(hist, M.alloc, "peak allocated", COLORS[1], { markers: true, scale: MiB }),
      line(hist, M.reserved, "peak reserved", COLORS[2], { markers: true, scale: MiB }),
    ], false],
    ["chart-time", "step time", "seconds", [
      line(hist, M.step, "step", COLORS[3]),
      line(hist, M.optstep, "optimizer share", COLORS[4]),
    ], false],
  ];
  // the next refresh is timed by the server's answer, not by the browser's drawing
  schedule(() => guarded(renderJob), !TERMINAL.has(job.status));
  await Promise.all(charts.map(([cid, title, yTitle, lines, isLoss]) => {
    const traces = lineTraces(lines);
    return drawChart(cid, traces, chartLayout(title, yTitle, { empty: !traces.length }), isLoss);
  }));
}

// ------------------------------------------------------------------ comparison page

function speedupText(arm, baseline) {
  if (arm.name === baseline) return "baseline";
  if (arm.reached_baseline === null || arm.reached_baseline === undefined) return "-";
  if (!arm.reached_baseline) return "not reached";
  return `${fmtNum(arm.steps_to_baseline, 4)} steps (${fmtRatio(arm.step_speedup_vs_baseline)})`;
}

async function renderComparison() {
  const id = OBJECT_ID;
  const [comp, curves] = await Promise.all([
    api(`/v1/comparisons/${encodeURIComponent(id)}`),
    api(`/v1/comparisons/${encodeURIComponent(id)}/curves`),
  ]);
  document.title = `${comp.name} · ALTO comparison`;
  const color = {};
  comp.arms.forEach((a, i) => { color[a.name] = COLORS[i % COLORS.length]; });
  const rows = comp.arms.map((a) => {
    const isBase = a.name === comp.baseline;
    return `<tr data-arm="${esc(a.name)}"><td>${esc(a.name)}${isBase ? " <em>(baseline)</em>" : ""}</td><td>${statusBadge(a.status)}</td>
      ${cell("final_val_loss_mean", a.final_val_loss_mean, fmtMeanStd(a.final_val_loss_mean, a.final_val_loss_std))}
      ${cell("best_val_loss_mean", a.best_val_loss_mean, fmtMeanStd(a.best_val_loss_mean, a.best_val_loss_std))}
      ${cell("val_loss_delta_vs_baseline", isBase ? null : a.val_loss_delta_vs_baseline, isBase ? "-" : fmtSigned(a.val_loss_delta_vs_baseline))}
      ${cell("steps_to_baseline", a.steps_to_baseline, speedupText(a, comp.baseline))}
      ${cell("wall_time_to_baseline_s", a.wall_time_to_baseline_s, fmtDuration(a.wall_time_to_baseline_s))}
      ${cell("tokens_per_s_mean", a.tokens_per_s_mean, `${fmtRate(a.tokens_per_s_mean)} (${fmtRatio(a.tokens_per_s_ratio)})`)}
      ${cell("peak_memory_overhead_pct", a.peak_memory_overhead_pct, `${fmtBytes(a.peak_memory_bytes_mean)} (${fmtSigned(a.peak_memory_overhead_pct, 3, "%")})`)}
      ${cell("optimizer_state_bytes_ratio", a.optimizer_state_bytes_ratio, `${fmtBytes(a.optimizer_state_bytes)} (${fmtRatio(a.optimizer_state_bytes_ratio)})`)}
      <td>${a.job_ids.map((j) => `<a href="/jobs/${esc(j)}">${shortId(j)}</a>`).join(" ")}</td></tr>`;
  });
  const content = document.getElementById("content");
  chartFrame(content, "comparison", (c) => c.append(
    el("div", { id: "comparison-head" }),
    el("div", { class: "card scroll", id: "summary-card" }),
    el("div", { class: "toolbar" }, logToggleEl(),
      el("span", { class: "meta", id: "band-note" }, "curves: mean over seeds, band mean ± std (the plot.png's numbers)")),
    el("div", { class: "grid" }, chartCard("chart-val"), chartCard("chart-train"), chartCard("chart-mem"), chartCard("chart-state"))));
  content.querySelector("#comparison-head").innerHTML = `
    <h1>${esc(comp.name)} ${statusBadge(comp.status)}</h1>
    <p class="meta">comparison ${esc(comp.id)} · baseline ${esc(comp.baseline)} · seeds ${esc(comp.seeds.join(", "))} · owner ${esc(comp.owner)} · created ${esc(fmtTime(comp.created_at))}</p>`;
  content.querySelector("#summary-card").innerHTML = `<h2>Summary</h2><table id="summary"><thead><tr><th>arm</th><th>status</th>
      <th class="num">final val loss</th><th class="num">best val loss</th><th class="num">Δ vs baseline</th>
      <th class="num">to baseline loss</th><th class="num">wall time to it</th><th class="num">tokens/s</th>
      <th class="num">peak memory</th><th class="num">optimizer state</th><th>jobs</th></tr></thead>
      <tbody>${rows.join("")}</tbody></table>`;
  const lossTraces = (metric) => curves.arms.flatMap((arm) => {
    const curve = arm.curves.find((c) => c.metric === metric);
    return curve ? bandTraces(arm.name, curve, color[arm.name] || COLORS[0], metric === M.val) : [];
  });
  const bars = (field) => comp.arms.map((a) => ({ label: a.name, value: a[field], color: color[a.name] }));
  const memBars = barTraces(bars("peak_memory_overhead_pct"), (v) => fmtSigned(v, 3, "%"));
  const stateBars = barTraces(bars("optimizer_state_bytes_ratio"), fmtRatio);
  schedule(() => guarded(renderComparison), !TERMINAL.has(comp.status));
  await Promise.all([
    ...[["chart-val", M.val, "validation loss"], ["chart-train", M.loss, "training loss"]].map(([cid, metric, title]) => {
      const traces = lossTraces(metric);
      return drawChart(cid, traces, chartLayout(title, "loss (nats/token)", { empty: !traces.length }), true);
    }),
    drawChart("chart-mem", memBars, barLayout("peak-memory overhead vs baseline (%)", memBars)),
    drawChart("chart-state", stateBars, barLayout("optimizer-state bytes ratio vs baseline", stateBars)),
  ]);
}

// ------------------------------------------------------------------ DOM building

// The study pages build their nodes with el(): every API string goes in as text
// (a text node or an attribute value), never as markup.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}
function statusEl(s) { return el("span", { class: "status " + s, "data-status": s }, s); }
function shortIdEl(id) { return el("span", { title: id }, String(id).slice(0, 8)); }
function kpiEl(label, value, field) {
  return el("div", { class: "kpi" }, el("div", { class: "label" }, label),
    el("div", { class: "value", "data-field": field || label }, value));
}
// a table cell whose raw number stays in data-value (what the browser test compares)
function tdEl(field, raw, children, cls = "num", extra = {}) {
  return el("td", { class: cls, "data-field": field, "data-value": raw === null || raw === undefined ? "" : String(raw), ...extra }, children);
}
function tableEl(id, headers, rows, numeric) {
  return el("table", { id },
    el("thead", null, el("tr", null, headers.map((h, i) => el("th", { class: numeric.has(i) ? "num" : null }, h)))),
    el("tbody", null, rows));
}
function fmtInt(v) { return v === null || v === undefined ? "-" : Math.round(v).toLocaleString("en-US"); }
function fmtCI(ci, digits = 4) { return ci ? `[${fmtNum(ci[0], digits)}, ${fmtNum(ci[1], digits)}]` : ""; }
function fmtParams(p) {
  if (!p || !Object.keys(p).length) return "-";
  return Object.keys(p).sort().map((k) => `${k}=${fmtNum(p[k], 4)}`).join(", ");
}
function fmtCounts(counts) {
  const parts = Object.keys(counts || {}).sort().map((k) => `${k.toLowerCase()} ${counts[k]}`);
  return parts.join(" · ") || "none yet";
}
const STUDY_LIVE = new Set(["tuning", "final"]);

// ------------------------------------------------------------------ studies page

async function renderStudies() {
  const page = await api("/v1/studies?limit=100");
  const rows = page.items.map((st) => {
    const arms = [st.baseline, ...st.arms.filter((a) => a !== st.baseline)];
    return el("tr", { "data-study": st.id },
      el("td", null, el("a", { href: `/studies/${encodeURIComponent(st.id)}` }, shortIdEl(st.id))),
      el("td", null, st.name), el("td", { "data-field": "phase" }, st.phase), el("td", null, statusEl(st.status)),
      el("td", { class: "num", "data-field": "jobs" }, String(st.jobs)),
      el("td", { "data-field": "batch_sizes" }, st.batch_sizes.join(", ")),
      el("td", { "data-field": "arms" }, arms.join(", ")),
      el("td", null, st.owner), el("td", null, fmtTime(st.created_at)));
  });
  if (!rows.length) {
    rows.push(el("tr", null, el("td", { colspan: 9, class: "empty" }, "no studies yet: start one with ",
      el("code", null, "alto study submit STUDY.yaml"))));
  }
  document.getElementById("content").replaceChildren(
    el("h1", null, "Studies"),
    el("div", { class: "card scroll" },
      tableEl("studies-table", ["id", "name", "phase", "status", "jobs", "batch sizes", "arms (baseline first)", "owner", "created"], rows, new Set([4])),
      page.next_cursor ? el("p", { class: "meta" }, "the newest 100 are shown; ", el("code", null, "alto study list"), " lists them all") : null));
  schedule(() => guarded(renderStudies), page.items.some((st) => STUDY_LIVE.has(st.phase)));
}

// ------------------------------------------------------------------ study page

function armRow(arm, baseline) {
  const isBase = arm.name === baseline;
  const trials = arm.trials || [];
  const ended = trials.filter((t) => TERMINAL.has(t.status)).length;
  const diverged = trials.filter((t) => t.diverged).length;
  const edge = arm.on_edge && arm.on_edge.length
    ? el("span", { class: "edge", title: "the chosen value is the lowest or highest point tried: the range may have been too narrow" },
      "edge: " + arm.on_edge.join(", "))
    : null;
  let reach = "-";
  if (arm.steps_to_target !== null && arm.steps_to_target !== undefined) {
    reach = `${fmtNum(arm.steps_to_target, 4)} (${fmtRatio(arm.speedup)})`;
  } else if (arm.reached_target === 0) {
    reach = "not reached";
  }
  const loss = arm.final_val_loss_mean === null || arm.final_val_loss_mean === undefined
    ? "-" : `${fmtNum(arm.final_val_loss_mean)} ${fmtCI(arm.final_val_loss_ci)}`.trim();
  const delta = isBase || arm.delta_vs_baseline === null || arm.delta_vs_baseline === undefined
    ? "-" : `${fmtSigned(arm.delta_vs_baseline, 4)} ${fmtCI(arm.delta_ci, 3)}`.trim();
  const verdict = isBase ? "baseline" : (arm.verdict || "-");
  const verdictCls = { better: "better", worse: "worse", "inside the noise": "noise" }[arm.verdict] || "";
  return el("tr", { "data-arm": arm.name },
    el("td", null, arm.name, isBase ? el("em", null, " (baseline)") : null),
    tdEl("trials", ended, `${ended}/${trials.length}` + (diverged ? ` (${diverged} diverged)` : "")),
    tdEl("chosen", arm.chosen ? JSON.stringify(arm.chosen) : null, [fmtParams(arm.chosen), edge ? " " : null, edge], "", { "data-edge": (arm.on_edge || []).join(",") }),
    tdEl("final_val_loss_mean", arm.final_val_loss_mean, loss, "num", { "data-ci": arm.final_val_loss_ci ? arm.final_val_loss_ci.join(",") : "" }),
    tdEl("delta_vs_baseline", isBase ? null : arm.delta_vs_baseline, delta, "num", { "data-ci": !isBase && arm.delta_ci ? arm.delta_ci.join(",") : "" }),
    tdEl("verdict", isBase ? null : arm.verdict, el("span", { class: verdictCls ? "verdict " + verdictCls : null }, verdict), ""),
    tdEl("steps_to_target", arm.steps_to_target, reach, "num", { "data-speedup": arm.speedup ?? "" }),
    tdEl("tokens_per_s_ratio", arm.tokens_per_s_ratio, fmtRatio(arm.tokens_per_s_ratio)),
    tdEl("peak_memory_ratio", arm.peak_memory_ratio, fmtRatio(arm.peak_memory_ratio)),
    tdEl("optimizer_state_ratio", arm.optimizer_state_ratio, fmtRatio(arm.optimizer_state_ratio)),
    el("td", null, (arm.final_job_ids || []).flatMap((j, i) => [i ? " " : null, el("a", { href: `/jobs/${encodeURIComponent(j)}` }, shortIdEl(j))])));
}

const ARM_HEADERS = ["arm", "trials ended", "chosen", "final val loss (95% CI)", "Δ vs baseline (95% CI)", "verdict",
  "steps to target (speed-up)", "tokens/s ratio", "peak memory ratio", "optimizer state ratio", "final jobs"];

function batchCard(study, batch) {
  const title = `batch ${batch.batch_size} · ${fmtInt(batch.steps)} steps · target ${fmtNum(batch.target)} (tuned ${study.baseline})`
    + (batch.eval_noise !== null && batch.eval_noise !== undefined ? ` · eval noise ±${fmtNum(batch.eval_noise, 2)}` : "");
  return el("div", { class: "card scroll batch", "data-batch": batch.batch_size },
    el("h2", null, title),
    tableEl(`batch-${batch.batch_size}`, ARM_HEADERS, batch.arms.map((a) => armRow(a, study.baseline)), new Set([1, 3, 4, 6, 7, 8, 9])));
}

function planCard(plan) {
  const unit = plan.resource === "gpu" ? "GPU" : "core";
  const rows = plan.batches.map((b) => el("tr", { "data-batch": b.batch_size },
    ...[b.batch_size, fmtInt(b.steps), fmtInt(b.tokens_per_job), b.warmup_steps, b.eval_interval, b.eval_batches, b.tuning_jobs, b.final_jobs]
      .map((v) => el("td", { class: "num" }, String(v)))));
  const trials = Object.keys(plan.trials || {}).map((arm) => {
    const points = plan.trials[arm];
    const more = points.length > 8 ? ` (+${points.length - 8} more)` : "";
    return el("li", null, `${arm}: ${points.slice(0, 8).map(fmtParams).join("; ")}${more}`);
  });
  return el("div", { class: "card scroll", id: "plan" },
    el("h2", null, "Plan"),
    el("div", { class: "kpis" },
      kpiEl("planned jobs", `${plan.jobs} (${plan.tuning_jobs} tuning, ${plan.final_jobs} final)`, "plan_jobs"),
      kpiEl("steps", fmtInt(plan.steps), "plan_steps"),
      kpiEl("tokens", fmtInt(plan.tokens), "plan_tokens"),
      kpiEl("estimate", `${fmtNum(plan.resource_hours, 3)} ${unit}-hours`, "plan_resource_hours"),
      plan.cluster_hours !== null && plan.cluster_hours !== undefined
        ? kpiEl("on this cluster", `≥ ${fmtDuration(plan.cluster_hours * 3600)}`, "plan_cluster_hours") : null),
    el("p", { class: "meta" }, "estimate basis: " + plan.estimate_basis),
    tableEl("plan-table", ["batch", "steps", "tokens/job", "warmup", "eval every", "eval batches", "trials", "finals"], rows, new Set([0, 1, 2, 3, 4, 5, 6, 7])),
    trials.length ? el("ul", { class: "trial-points" }, trials) : null);
}

function scalingCard(study) {
  const arms = [], sizes = [], at = {};
  for (const p of study.scaling) {
    if (!arms.includes(p.arm)) arms.push(p.arm);
    if (!sizes.includes(p.batch_size)) sizes.push(p.batch_size);
    at[p.arm + "@" + p.batch_size] = p;
  }
  sizes.sort((a, b) => a - b);
  const rows = arms.map((arm) => el("tr", { "data-arm": arm }, el("td", null, arm), sizes.map((b) => {
    const p = at[arm + "@" + b];
    const reached = p && p.reached && p.steps_to_target !== null && p.steps_to_target !== undefined;
    return tdEl("steps_to_target", reached ? p.steps_to_target : null, p ? (reached ? fmtNum(p.steps_to_target, 4) : "not reached") : "-",
      "num", { "data-batch": b });
  })));
  return el("div", { class: "card scroll", id: "scaling" },
    el("h2", null, `Steps to the common target ${fmtNum(study.common_target)}`),
    tableEl("scaling-table", ["arm", ...sizes.map((b) => `batch ${b}`)], rows, new Set(sizes.map((_, i) => i + 1))));
}

// The plot costs the server a few seconds to draw: it is fetched once per state of the
// study's jobs (not on every refresh) and kept as a blob URL across refreshes.
const studyPlot = { key: null, url: null, error: null };

function showStudyPlot() {
  const box = document.getElementById("study-plot");
  if (!box) return;
  const title = el("h2", null, "Study plot");
  if (studyPlot.url) {
    const img = el("img", { src: studyPlot.url, alt: "final loss per arm against batch size, tuning curves, steps to the common target, loss curves" });
    img.addEventListener("load", () => { box.dataset.state = "yes"; });
    img.addEventListener("error", () => { box.dataset.state = "error"; });
    box.replaceChildren(title, img);
  } else if (studyPlot.error) {
    box.dataset.state = "error";
    box.replaceChildren(title, el("p", { class: "error" }, "the plot could not be drawn: " + studyPlot.error));
  } else {
    box.dataset.state = "loading";
    box.replaceChildren(title, el("p", { class: "empty" }, "drawing the plot…"));
  }
}

async function loadStudyPlot(id, key) {
  let url = null, error = null;
  try {
    url = URL.createObjectURL(await apiBlob(`/v1/studies/${encodeURIComponent(id)}/plot.png`, "image/png"));
  } catch (err) {
    error = String(err.message || err);
  }
  if (studyPlot.key !== key) { if (url) URL.revokeObjectURL(url); return; }  // a newer one is on its way
  if (url && studyPlot.url) URL.revokeObjectURL(studyPlot.url);
  if (url) { studyPlot.url = url; studyPlot.error = null; } else { studyPlot.error = error; }
  showStudyPlot();
}

async function renderStudy() {
  const id = OBJECT_ID;
  const study = await api(`/v1/studies/${encodeURIComponent(id)}`);
  document.title = `${study.name} · ALTO study`;
  const ended = Object.entries(study.jobs || {}).filter(([k]) => TERMINAL.has(k)).reduce((a, [, v]) => a + v, 0);
  const arms = [study.baseline, ...study.arms.filter((a) => a !== study.baseline)];
  const findings = study.findings.length
    ? el("ul", { id: "findings" }, study.findings.map((f) => el("li", null, f)))
    : el("p", { id: "findings", class: "empty" }, "no findings yet");
  document.getElementById("content").replaceChildren(
    el("h1", null, study.name, " ", statusEl(study.status)),
    el("p", { class: "meta" }, `study ${study.id} · arms ${arms.join(", ")} (baseline ${study.baseline}) · batch sizes ${study.batch_sizes.join(", ")} · seeds ${study.seeds.join(", ")} · owner ${study.owner} · created ${fmtTime(study.created_at)}`),
    study.phase_reason ? el("p", { class: "meta", id: "phase-reason" }, study.phase_reason) : null,
    el("div", { class: "kpis" },
      kpiEl("phase", study.phase, "phase"),
      kpiEl("jobs ended", `${ended}/${study.plan.jobs}`, "jobs_ended"),
      kpiEl("jobs by status", fmtCounts(study.jobs), "jobs")),
    planCard(study.plan),
    ...study.batches.map((b) => batchCard(study, b)),
    study.scaling.length ? scalingCard(study) : null,
    el("div", { class: "card" }, el("h2", null, "Findings"), findings),
    el("div", { class: "card plot", id: "study-plot" }));
  const key = study.phase + JSON.stringify(study.jobs);
  if (key !== studyPlot.key) {
    studyPlot.key = key;
    studyPlot.error = null;
    loadStudyPlot(id, key);  // not awaited: the tables do not wait for the picture
  }
  showStudyPlot();
  schedule(() => guarded(renderStudy), STUDY_LIVE.has(study.phase));
}

// ------------------------------------------------------------------ start

function start() {
  const render = {
    jobs: renderJobs, comparisons: renderComparisons, job: renderJob, comparison: renderComparison,
    studies: renderStudies, study: renderStudy,
  }[PAGE];
  if (!render) { showError(`unknown page ${PAGE}`); return; }
  document.body.dataset.ready = "loading";
  guarded(async () => { await render(); document.body.dataset.ready = "yes"; });
}

start();
