// ALTO dashboard: our own small script, no libraries. It reads the public /v1
// API with the user's bearer token and draws every chart as SVG in the page,
// so it works offline. Pages refresh every few seconds while anything runs.
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

// ------------------------------------------------------------------ SVG charts

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { const pad = Math.abs(lo) * 0.05 || 1; lo -= pad; hi += pad; }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) || 10 * mag;
  const start = Math.floor(lo / step) * step;
  const ticks = [];
  for (let t = start; t <= hi + step * 0.5; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

// series: [{label, color, points: [[x, y]...], band: [[x, lo, hi]...], dash}]
function lineChart(title, series, opts = {}) {
  const W = 640, H = opts.height || 260, L = 58, R = 14, T = 26, B = 36;
  const xs = [], ys = [];
  for (const s of series) {
    for (const [x, y] of s.points) if (Number.isFinite(y)) { xs.push(x); ys.push(y); }
    for (const [x, lo, hi] of s.band || []) if (Number.isFinite(lo) && Number.isFinite(hi)) { xs.push(x); ys.push(lo, hi); }
  }
  if (!xs.length) {
    return `<div class="chart-empty"><svg class="chart" viewBox="0 0 ${W} 80"><text class="title" x="${L}" y="18">${esc(title)}</text><text x="${L}" y="50">no data yet</text></svg></div>`;
  }
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  series = series.filter((s) => s.points.length || (s.band && s.band.length));
  const yt = niceTicks(y0, y1, 5); y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
  const xt = niceTicks(x0, x1, 6).filter((t) => t >= x0 && t <= x1);
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const fmt = opts.yFormat || ((v) => fmtNum(v, 3));
  let g = `<text class="title" x="${L}" y="16">${esc(title)}</text>`;
  for (const t of yt) g += `<line class="grid" x1="${L}" x2="${W - R}" y1="${sy(t)}" y2="${sy(t)}"/><text x="${L - 6}" y="${sy(t) + 4}" text-anchor="end">${esc(fmt(t))}</text>`;
  for (const t of xt) g += `<line class="grid" x1="${sx(t)}" x2="${sx(t)}" y1="${T}" y2="${H - B}"/><text x="${sx(t)}" y="${H - B + 15}" text-anchor="middle">${esc(fmtNum(t, 4))}</text>`;
  g += `<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"/><line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${H - B}"/>`;
  g += `<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">${esc(opts.xLabel || "step")}</text>`;
  for (const s of series) {
    if (s.band && s.band.length > 1) {
      const top = s.band.map(([x, , hi]) => `${sx(x).toFixed(1)},${sy(hi).toFixed(1)}`);
      const bot = s.band.slice().reverse().map(([x, lo]) => `${sx(x).toFixed(1)},${sy(lo).toFixed(1)}`);
      g += `<polygon points="${top.concat(bot).join(" ")}" fill="${s.color}" fill-opacity="0.16" stroke="none"/>`;
    }
    const pts = s.points.filter(([, y]) => Number.isFinite(y));
    if (pts.length === 1) {
      g += `<circle cx="${sx(pts[0][0])}" cy="${sy(pts[0][1])}" r="3.5" fill="${s.color}"/>`;
    } else if (pts.length > 1) {
      const d = pts.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
      g += `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.8" ${s.dash ? 'stroke-dasharray="5 4"' : ""}/>`;
      if (s.markers) for (const [x, y] of pts) g += `<circle cx="${sx(x)}" cy="${sy(y)}" r="3" fill="${s.color}"/>`;
    }
  }
  const legend = series.map((s) => `<span><i style="background:${s.color}"></i>${esc(s.label)}</span>`).join("");
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${g}</svg><div class="legend">${legend}</div>`;
}

// bars: [{label, value, color}]
function barChart(title, bars, fmt) {
  const W = 640, rowH = 30, L = 120, R = 80, T = 28;
  const H = T + rowH * Math.max(1, bars.length) + 10;
  const vals = bars.map((b) => b.value).filter((v) => Number.isFinite(v));
  let g = `<text class="title" x="10" y="16">${esc(title)}</text>`;
  if (!vals.length) return `<svg class="chart" viewBox="0 0 ${W} 60">${g}<text x="10" y="44">no data yet</text></svg>`;
  const lo = Math.min(0, ...vals), hi = Math.max(0, ...vals);
  const span = hi - lo || 1;
  const sx = (v) => L + ((v - lo) / span) * (W - L - R);
  bars.forEach((b, i) => {
    const y = T + i * rowH;
    g += `<text x="${L - 8}" y="${y + 19}" text-anchor="end">${esc(b.label)}</text>`;
    if (Number.isFinite(b.value)) {
      const a = sx(Math.min(0, b.value)), z = sx(Math.max(0, b.value));
      g += `<rect x="${a}" y="${y + 6}" width="${Math.max(1, z - a)}" height="${rowH - 12}" fill="${b.color}" rx="2"/>`;
      g += `<text x="${z + 6}" y="${y + 19}">${esc(fmt(b.value))}</text>`;
    } else {
      g += `<text x="${L + 4}" y="${y + 19}">-</text>`;
    }
  });
  g += `<line class="axis" x1="${sx(0)}" x2="${sx(0)}" y1="${T}" y2="${H - 8}"/>`;
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${g}</svg>`;
}

// Mean and min-max band over seeds, on the union of steps; each seed is
// interpolated linearly inside its own range (servers may downsample seeds
// at different steps).
function meanBand(seriesList) {
  const runs = seriesList.filter((s) => s && s.steps.length);
  if (!runs.length) return { points: [], band: [] };
  const steps = Array.from(new Set(runs.flatMap((s) => s.steps))).sort((a, b) => a - b);
  const at = (s, x) => {
    const xs = s.steps, ys = s.values;
    if (x < xs[0] || x > xs[xs.length - 1]) return null;
    let i = 0;
    while (i < xs.length - 1 && xs[i + 1] < x) i++;
    if (xs[i] === x) return ys[i];
    if (i + 1 >= xs.length) return ys[i];
    const t = (x - xs[i]) / (xs[i + 1] - xs[i]);
    return ys[i] + t * (ys[i + 1] - ys[i]);
  };
  const points = [], band = [];
  for (const x of steps) {
    const vals = runs.map((s) => at(s, x)).filter((v) => v !== null && Number.isFinite(v));
    if (!vals.length) continue;
    const mean = vals.reduce((a, b) => a + b, 0) / vals.length;
    points.push([x, mean]);
    band.push([x, Math.min(...vals), Math.max(...vals)]);
  }
  return { points, band: runs.length > 1 ? band : [] };
}

function seriesOf(history, name) {
  return (history.series || []).find((s) => s.name === name);
}
function pointsOf(history, name, scale = 1) {
  const s = seriesOf(history, name);
  return s ? s.steps.map((x, i) => [x, s.values[i] * scale]) : [];
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
  const memSeries = [];
  if (seriesOf(hist, M.rss)) memSeries.push({ label: "peak RSS (MiB)", color: COLORS[0], points: pointsOf(hist, M.rss, 1 / 1048576), markers: true });
  if (seriesOf(hist, M.alloc)) memSeries.push({ label: "peak allocated (MiB)", color: COLORS[1], points: pointsOf(hist, M.alloc, 1 / 1048576), markers: true });
  if (seriesOf(hist, M.reserved)) memSeries.push({ label: "peak reserved (MiB)", color: COLORS[2], points: pointsOf(hist, M.reserved, 1 / 1048576), markers: true });
  document.getElementById("content").innerHTML = `
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
    </div>
    <div class="grid">
      <div class="card" id="chart-loss">${lineChart("loss", [
        { label: "train loss", color: COLORS[0], points: pointsOf(hist, M.loss) },
        { label: "validation loss", color: COLORS[1], points: pointsOf(hist, M.val), markers: true },
      ])}</div>
      <div class="card" id="chart-tps">${lineChart("throughput (tokens/s)", [
        { label: "tokens/s", color: COLORS[2], points: pointsOf(hist, M.tps) },
      ])}</div>
      <div class="card" id="chart-mem">${lineChart("memory (MiB)", memSeries)}</div>
      <div class="card" id="chart-time">${lineChart("step time (s)", [
        { label: "step", color: COLORS[3], points: pointsOf(hist, M.step) },
        { label: "optimizer share", color: COLORS[4], points: pointsOf(hist, M.optstep) },
      ])}</div>
    </div>`;
  schedule(() => guarded(renderJob), !TERMINAL.has(job.status));
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
  const comp = await api(`/v1/comparisons/${encodeURIComponent(id)}`);
  document.title = `${comp.name} · ALTO comparison`;
  const histories = {};
  await Promise.all(comp.arms.flatMap((arm) => arm.job_ids.map(async (jid) => {
    histories[jid] = await api(`/v1/jobs/${encodeURIComponent(jid)}/metrics?names=${encodeURIComponent(M.loss + "," + M.val)}&max_points=1000`);
  })));
  const color = {};
  comp.arms.forEach((a, i) => { color[a.name] = COLORS[i % COLORS.length]; });
  const curve = (name) => comp.arms.map((arm) => {
    const mb = meanBand(arm.job_ids.map((j) => histories[j] && seriesOf(histories[j], name)));
    return { label: `${arm.name}${arm.job_ids.length > 1 ? ` (mean, min–max of ${arm.job_ids.length} seeds)` : ""}`, color: color[arm.name], points: mb.points, band: mb.band, markers: name === M.val };
  });
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
  document.getElementById("content").innerHTML = `
    <h1>${esc(comp.name)} ${statusBadge(comp.status)}</h1>
    <p class="meta">comparison ${esc(comp.id)} · baseline ${esc(comp.baseline)} · seeds ${esc(comp.seeds.join(", "))} · owner ${esc(comp.owner)} · created ${esc(fmtTime(comp.created_at))}</p>
    <div class="card scroll"><h2>Summary</h2><table id="summary"><thead><tr><th>arm</th><th>status</th>
      <th class="num">final val loss</th><th class="num">best val loss</th><th class="num">Δ vs baseline</th>
      <th class="num">to baseline loss</th><th class="num">wall time to it</th><th class="num">tokens/s</th>
      <th class="num">peak memory</th><th class="num">optimizer state</th><th>jobs</th></tr></thead>
      <tbody>${rows.join("")}</tbody></table></div>
    <div class="grid">
      <div class="card" id="chart-val">${lineChart("validation loss", curve(M.val))}</div>
      <div class="card" id="chart-train">${lineChart("training loss", curve(M.loss))}</div>
      <div class="card" id="chart-mem">${barChart("peak-memory overhead vs baseline (%)", comp.arms.map((a) => ({ label: a.name, value: a.peak_memory_overhead_pct, color: color[a.name] })), (v) => fmtSigned(v, 3, "%"))}</div>
      <div class="card" id="chart-state">${barChart("optimizer-state bytes ratio vs baseline", comp.arms.map((a) => ({ label: a.name, value: a.optimizer_state_bytes_ratio, color: color[a.name] })), fmtRatio)}</div>
    </div>`;
  schedule(() => guarded(renderComparison), !TERMINAL.has(comp.status));
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
