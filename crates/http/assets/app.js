// Forewarn's device-health page: the fleet from /api/devices, kept current by the
// /api/events stream of changes, one device in detail from /api/devices/{id}.
"use strict";

const STATES = ["ok", "warning", "alarm", "silenced", "offline"];
const devices = new Map(); // id -> {state, score, last, labels, el}
let queries = [];
let selected = null;
let seq = 0;
let source = null;
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem("forewarn-token") || ""; }

function askToken() {
  const t = window.prompt("Bearer token for this Forewarn endpoint", token());
  if (t !== null) { sessionStorage.setItem("forewarn-token", t.trim()); start(); }
}

async function api(path, opts) {
  opts = opts || {};
  opts.headers = Object.assign({}, opts.headers);
  if (token()) opts.headers.Authorization = "Bearer " + token();
  const r = await fetch(path, opts);
  if (r.status === 401 && !opts.noPrompt) { askToken(); throw new Error("unauthorized"); }
  return r;
}

function text(el, s) { el.textContent = s; return el; }
function el(tag, cls, s) { const e = document.createElement(tag); if (cls) e.className = cls; if (s !== undefined) e.textContent = s; return e; }
function fmtTime(ms) { return ms == null ? "-" : new Date(ms).toISOString().replace("T", " ").slice(0, 19); }
function fmtScore(s) { return s == null ? "-" : s.toFixed(2); }

function visible(d) {
  const site = $("site").value, line = $("line").value;
  return (!site || d.labels.site === site) && (!line || d.labels.line === line);
}

function addOption(sel, v) {
  if (!v || [...sel.options].some((o) => o.value === v)) return;
  // Kept in order ("all" first), however the devices arrive.
  const o = el("option", "", v);
  o.value = v;
  const after = [...sel.options].slice(1).find((x) => x.value > v);
  sel.insertBefore(o, after || null);
}

function upsert(id, state, score, last, labels) {
  let d = devices.get(id);
  if (!d) {
    const e = el("div", "dev");
    e.dataset.id = id;
    e.addEventListener("click", () => show(id));
    d = { el: e, labels: {} };
    devices.set(id, d);
    $("grid").appendChild(e);
  }
  d.state = state; d.score = score; d.last = last; d.labels = labels || {};
  d.el.className = "dev " + state + (id === selected ? " sel" : "");
  d.el.dataset.state = state;
  d.el.title = id + ": " + state + ", score " + fmtScore(score);
  addOption($("site"), d.labels.site);
  addOption($("line"), d.labels.line);
  d.el.style.display = visible(d) ? "" : "none";
}

function counts() {
  const n = {}; STATES.forEach((s) => (n[s] = 0));
  let shown = 0;
  for (const d of devices.values()) { if (visible(d)) { n[d.state]++; shown++; } }
  const c = $("counts");
  c.dataset.total = devices.size;
  STATES.forEach((s) => (c.dataset[s] = n[s]));
  text(c, shown + " devices: " + STATES.map((s) => n[s] + " " + s).join(", "));
}

function applyFilters() {
  for (const d of devices.values()) d.el.style.display = visible(d) ? "" : "none";
  counts();
}

async function load() {
  const r = await api("/api/devices");
  const body = await r.json();
  seq = body.seq;
  for (const d of body.devices) upsert(d.device, d.state, d.score, d.last_seen ? Date.parse(d.last_seen) : null, d.labels);
  counts();
  queries = await (await api("/api/queries")).json();
  document.body.dataset.loaded = "true";
}

function follow() {
  if (source) source.close();
  const t = token();
  source = new EventSource("/api/events?since=" + seq + (t ? "&token=" + encodeURIComponent(t) : ""));
  source.onopen = () => { $("live").className = "on"; text($("live"), "live"); };
  source.onerror = () => { $("live").className = "off"; text($("live"), "reconnecting"); };
  source.addEventListener("delta", (e) => {
    const m = JSON.parse(e.data);
    seq = m.seq;
    let mine = false;
    for (const [id, state, score, last, labels] of m.u) {
      upsert(id, state, score, last, labels);
      if (id === selected) mine = true;
    }
    counts();
    if (mine) show(selected);
  });
}

function thresholds(query) {
  const q = queries.find((q) => q.name === query);
  return q && q.lifecycle ? q.lifecycle : { warning_at: 1.0, alarm_at: null };
}

function chart(windows, th) {
  const svg = $("chart"), W = 600, H = 180, P = 30;
  svg.innerHTML = "";
  const pts = windows.filter((w) => w.score != null);
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs, s) => {
    const e = document.createElementNS(ns, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (s) e.textContent = s;
    svg.appendChild(e);
    return e;
  };
  if (!pts.length) { add("text", { x: P, y: H / 2 }, "no scored window yet"); return; }
  const t0 = Date.parse(pts[0].window_end), t1 = Date.parse(pts[pts.length - 1].window_end);
  const limit = th.alarm_at || th.warning_at;
  const top = Math.max(limit, ...pts.map((p) => p.score));
  const ymax = top * 1.1;
  // Scores far above the thresholds would flatten them onto the axis: a log scale then.
  const log = top > 10 * limit;
  const f = (s) => (log ? Math.log10(1 + Math.max(s, 0)) : s);
  const x = (t) => P + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - 2 * P) : (W - 2 * P) / 2);
  const y = (s) => H - P - (f(s) / f(ymax)) * (H - 2 * P);
  add("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#999" });
  for (const [v, c, name] of [[th.warning_at, "#f0ad4e", "warning"], [th.alarm_at, "#d9534f", "alarm"]]) {
    if (v == null) continue;
    add("line", { x1: P, y1: y(v), x2: W - P, y2: y(v), stroke: c, "stroke-dasharray": "4 3", class: "threshold" });
    add("text", { x: W - P - 2, y: y(v) - 3, "font-size": 10, fill: c, "text-anchor": "end" }, name + " " + v);
  }
  add("polyline", {
    fill: "none", stroke: "#337ab7", "stroke-width": 1.5, class: "score",
    points: pts.map((p) => x(Date.parse(p.window_end)).toFixed(1) + "," + y(p.score).toFixed(1)).join(" "),
  });
  add("text", { x: 2, y: y(0) + 4, "font-size": 10 }, "0");
  add("text", { x: 2, y: y(top) + 4, "font-size": 10 }, top.toFixed(1) + (log ? " (log)" : ""));
  add("text", { x: P, y: H - 8, "font-size": 10 }, fmtTime(t0));
  add("text", { x: W - P - 110, y: H - 8, "font-size": 10 }, fmtTime(t1));
}

function rows(table, head, data) {
  table.innerHTML = "";
  const tr = table.appendChild(el("tr"));
  head.forEach((h) => tr.appendChild(el("th", "", h)));
  data.forEach((r) => { const t = table.appendChild(el("tr")); r.forEach((c) => t.appendChild(el("td", "", c))); });
}

async function show(id) {
  const prev = devices.get(selected);
  if (prev) prev.el.classList.remove("sel");
  selected = id;
  const d = devices.get(id);
  if (d) d.el.classList.add("sel");
  const r = await api("/api/devices/" + encodeURIComponent(id));
  if (!r.ok || selected !== id) return;
  const dv = await r.json();
  $("detail").hidden = false;
  text($("d-name"), id);
  const st = $("d-state");
  st.className = "badge " + dv.state;
  text(st, dv.state);
  const labels = Object.entries(dv.labels).map(([k, v]) => k + " " + v).join(", ");
  text($("d-meta"), [labels, "score " + fmtScore(dv.score), "last seen " + fmtTime(dv.last_seen ? Date.parse(dv.last_seen) : null)].filter(Boolean).join(" · "));
  const q = (dv.latest && dv.latest.query) || (dv.latest_alert && dv.latest_alert.query);
  chart(dv.windows, thresholds(q));
  const a = dv.latest_alert;
  text($("d-why"), a ? (a.query + ", window ending " + fmtTime(Date.parse(a.window_end)) + ", score " + fmtScore(a.score) + (a.explanation ? ": " + a.explanation : "")) : "no alert");
  rows($("d-features"), ["feature", "value"], a ? Object.entries(a.features).map(([k, v]) => [k, typeof v === "number" ? v.toFixed(3) : String(v)]) : []);
  rows($("d-history"), ["window end", "event", "rule", "state", "score", "why"],
    dv.history.slice().reverse().map((h) => [fmtTime(Date.parse(h.window_end)), h.event, h.rule, h.state || "", fmtScore(h.score), h.explanation || ""]));
}

async function command(action) {
  if (!selected) return;
  const body = { action: action, by: "health-page" };
  if (action === "silence") body.for = "2 hours";
  const r = await api("/api/devices/" + encodeURIComponent(selected) + "/command", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const m = await r.json();
  text($("d-msg"), r.ok ? action + " sent" : m.error + ": " + m.detail);
}

async function start() {
  try {
    await load();
    // `?live=0`: a snapshot without the live stream (for headless screenshots: a
    // browser waiting for the page to settle would wait on the stream forever).
    if (new URLSearchParams(location.search).get("live") !== "0") follow();
    else text($("live"), "snapshot");
    // `#device=ID` opens that device (a link to share, a screenshot to take).
    const m = location.hash.match(/^#device=(.+)$/);
    if (m) await show(decodeURIComponent(m[1]));
  } catch (e) {
    text($("live"), String(e.message || e));
  }
}

$("site").addEventListener("change", applyFilters);
$("line").addEventListener("change", applyFilters);
$("token-btn").addEventListener("click", askToken);
$("ack").addEventListener("click", () => command("acknowledge"));
$("silence").addEventListener("click", () => command("silence"));
$("unsilence").addEventListener("click", () => command("unsilence"));
start();
