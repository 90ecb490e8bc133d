// Tern dashboard: plain JavaScript, no build step, no external assets. Talks to /api/v1.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const HISTORY = 300; // points kept per chart: five minutes at one a second

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function showError(msg) {
  const e = $("#error");
  if (msg) { e.textContent = msg; e.hidden = false; } else { e.hidden = true; }
}

async function api(path, options = {}) {
  const r = await fetch("/api/v1" + path, options);
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

// ---- payload previews: text, JSON pretty-printed, hex for binary ----
function b64bytes(s) { const bin = atob(s); const out = new Uint8Array(bin.length); for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i); return out; }
function hex(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const row = Array.from(bytes.slice(i, i + 16));
    lines.push(i.toString(16).padStart(6, "0") + "  " + row.map((b) => b.toString(16).padStart(2, "0")).join(" "));
  }
  return lines.join("\n");
}
function preview(payload, encoding) {
  if (encoding === "base64") return hex(b64bytes(payload));
  try { return JSON.stringify(JSON.parse(payload), null, 2); } catch (_) { return payload; }
}

// ---- charts: a line per canvas, drawn by hand ----
class Chart {
  constructor(id, digits = 0) { this.fig = document.getElementById(id); this.canvas = $("canvas", this.fig); this.value = $(".value", this.fig); this.points = []; this.digits = digits; }
  push(v) {
    this.points.push(v);
    if (this.points.length > HISTORY) this.points.shift();
    this.value.textContent = Number(v).toFixed(this.digits);
    this.fig.dataset.value = String(v);
    this.draw();
  }
  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (c.width !== w * dpr || c.height !== h * dpr) { c.width = w * dpr; c.height = h * dpr; }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const max = Math.max(1, ...this.points) * 1.1;
    g.strokeStyle = "#dde1e8"; g.lineWidth = 1; g.fillStyle = "#6b7385"; g.font = "10px system-ui";
    for (let i = 0; i <= 2; i++) { const y = Math.round(h - 12 - (h - 20) * i / 2) + 0.5; g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke(); g.fillText(formatNum(max * i / 2), 2, y - 2); }
    if (this.points.length < 2) return;
    const step = w / (HISTORY - 1), x0 = w - step * (this.points.length - 1);
    g.beginPath(); g.strokeStyle = "#1f6feb"; g.lineWidth = 1.5;
    this.points.forEach((v, i) => { const x = x0 + i * step, y = h - 12 - (h - 20) * v / max; if (i === 0) g.moveTo(x, y); else g.lineTo(x, y); });
    g.stroke();
    g.lineTo(w, h - 12); g.lineTo(x0, h - 12); g.closePath(); g.fillStyle = "rgba(31,111,235,.08)"; g.fill();
  }
}
function formatNum(v) { return v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e3 ? (v / 1e3).toFixed(1) + "k" : v.toFixed(v < 10 && v % 1 ? 1 : 0); }

const charts = {
  connections: new Chart("chart-connections"),
  in: new Chart("chart-in", 1),
  out: new Chart("chart-out", 1),
  dropped: new Chart("chart-dropped", 1),
  queued: new Chart("chart-queued"),
  memory: new Chart("chart-memory", 1),
};
let last = null;

async function poll() {
  try {
    const s = await api("/stats");
    const now = performance.now();
    if (last) {
      const dt = Math.max(0.001, (now - last.t) / 1000);
      charts.in.push((s.messages_received - last.s.messages_received) / dt);
      charts.out.push((s.messages_sent - last.s.messages_sent) / dt);
      charts.dropped.push((s.messages_dropped - last.s.messages_dropped) / dt);
    }
    charts.connections.push(s.clients_connected);
    charts.queued.push(s.queued_messages);
    charts.memory.push((s.resident_memory_bytes || 0) / 1048576);
    last = { s, t: now };
    const cards = [
      ["Clients", s.clients_connected], ["Sessions", s.sessions], ["Subscriptions", s.subscriptions],
      ["Retained", s.retained], ["Received", s.messages_received], ["Sent", s.messages_sent],
      ["Dropped", s.messages_dropped], ["In flight", s.inflight], ["Auth failures", s.auth_failures],
      ["Uptime", formatUptime(s.uptime_seconds)],
    ];
    $("#cards").replaceChildren(...cards.map(([l, v]) => el("div", { class: "card" }, el("div", { class: "label" }, l), el("div", { class: "num", "data-card": l }, typeof v === "number" ? formatNum(v) : v))));
    showError(null);
  } catch (e) {
    showError("Cannot reach the broker: " + e.message);
  }
}
function formatUptime(s) { const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60; return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`; }

// ---- clients ----
async function loadClients() {
  const prefix = $("#clients-search").value.trim();
  const q = prefix ? `?client_id=${encodeURIComponent(prefix)}&limit=1000` : "?limit=1000";
  try {
    const page = await api("/clients" + q);
    $("#clients-count").textContent = `${page.total} connected`;
    $("#clients-table tbody").replaceChildren(...page.items.map((c) => {
      const conn = c.connection || {};
      const kick = el("button", { class: "danger", "data-kick": c.client_id, onclick: async (ev) => {
        ev.stopPropagation();
        if (!confirm(`Disconnect ${c.client_id}?`)) return;
        try { await api(`/clients/${encodeURIComponent(c.client_id)}`, { method: "DELETE" }); setTimeout(loadClients, 200); } catch (e) { showError(e.message); }
      } }, "Disconnect");
      return el("tr", { class: "clickable", "data-client": c.client_id, onclick: () => showClient(c.client_id) },
        el("td", {}, c.client_id), el("td", {}, c.protocol_version), el("td", {}, conn.address), el("td", {}, conn.username || ""),
        el("td", {}, conn.listener), el("td", {}, c.subscriptions_count), el("td", {}, c.inflight), el("td", {}, c.queued), el("td", {}, kick));
    }));
  } catch (e) { showError(e.message); }
}
async function showClient(id) {
  try {
    const c = await api(`/clients/${encodeURIComponent(id)}`);
    const d = $("#client-detail");
    d.textContent = JSON.stringify(c, null, 2);
    d.hidden = false;
  } catch (e) { showError(e.message); }
}

// ---- sessions and subscriptions ----
async function loadSessions() {
  const prefix = $("#sessions-search").value.trim();
  try {
    const page = await api("/sessions?limit=1000" + (prefix ? `&client_id=${encodeURIComponent(prefix)}` : ""));
    $("#sessions-count").textContent = `${page.total} sessions`;
    $("#sessions-table tbody").replaceChildren(...page.items.map((s) => el("tr", {},
      el("td", {}, s.client_id), el("td", {}, s.connected ? "online" : "offline"), el("td", {}, s.protocol_version),
      el("td", {}, s.session_expiry_interval), el("td", {}, s.subscriptions_count), el("td", {}, s.queued), el("td", {}, s.dropped),
      el("td", {}, el("button", { class: "danger", onclick: async () => {
        if (!confirm(`End the session of ${s.client_id}?`)) return;
        try { await api(`/clients/${encodeURIComponent(s.client_id)}?discard_session=true`, { method: "DELETE" }); setTimeout(loadSessions, 200); } catch (e) { showError(e.message); }
      } }, "Discard")))));
  } catch (e) { showError(e.message); }
}
async function loadSubscriptions() {
  const prefix = $("#subs-search").value.trim();
  try {
    const page = await api("/subscriptions?limit=1000" + (prefix ? `&client_id=${encodeURIComponent(prefix)}` : ""));
    $("#subs-table tbody").replaceChildren(...page.items.map((s) => el("tr", {},
      el("td", {}, s.client_id), el("td", {}, s.filter), el("td", {}, s.qos), el("td", {}, s.no_local ? "yes" : ""), el("td", {}, s.identifier ?? ""))));
    const groups = await api("/shared-groups");
    $("#groups-table tbody").replaceChildren(...groups.items.map((g) => el("tr", {}, el("td", {}, g.group), el("td", {}, g.filter), el("td", {}, g.members.join(", ")))));
  } catch (e) { showError(e.message); }
}

// ---- topics: retained messages, topics seen recently, and topics seen live, as a tree ----
// Node keys: "\u0000" holds a retained message's summary, "\u0001" the last message seen (the
// broker's record of topics seen recently, then the live watch).
let topicRoot = {};
let topicsLive = null;
function topicNode(topic) {
  let node = topicRoot;
  for (const level of topic.split("/")) node = (node[level] ??= {});
  return node;
}
async function loadTopics() {
  const filter = $("#topics-filter").value.trim() || "#";
  try {
    const f = encodeURIComponent(filter);
    const [page, recent] = await Promise.all([api(`/retained?limit=1000&filter=${f}`), api(`/topics?limit=1000&filter=${f}`)]);
    topicRoot = {};
    for (const m of page.items) topicNode(m.topic)["\u0000"] = m;
    for (const m of recent.items) topicNode(m.topic)["\u0001"] = { ...m, at: m.last_seen, recent: true };
    $("#topics-status").textContent = `${page.total} retained, ${recent.total} seen in the last hour`;
    drawTopics();
  } catch (e) { showError(e.message); }
}
function drawTopics() { $("#topic-tree").replaceChildren(...treeItems(topicRoot)); }
function treeItems(node) {
  return Object.keys(node).filter((k) => k !== "\u0000" && k !== "\u0001").sort().map((k) => {
    const child = node[k], msg = child["\u0000"], seen = child["\u0001"];
    const click = msg ? () => showRetained(msg.topic) : seen ? () => showSeen(seen) : null;
    const li = el("li", {}, el("span", { class: msg || seen ? "leaf" : "node", onclick: click, title: seen && !msg ? (seen.recent ? "seen recently" : "seen live") : "" }, (k || "(empty)") + (seen && !msg ? " \u2022" : "")));
    const sub = treeItems(child);
    if (sub.length) li.append(el("ul", {}, ...sub));
    return li;
  });
}
function showSeen(m) {
  $("#topic-name").textContent = `${m.topic} (seen ${m.recent ? "at" : "live"} ${new Date(m.at).toLocaleTimeString()}, QoS ${m.qos}, ${m.payload_size} bytes)`;
  $("#topic-payload").textContent = preview(m.payload, m.payload_encoding);
  $("#topic-delete").hidden = true;
}
// Topics seen live: a watch of the filter while the Topics view is open (the broker sends every
// matching message meanwhile, so it runs only on request, and stops when the view is left).
function toggleTopicsLive() {
  if (topicsLive) { stopTopicsLive(); return; }
  const filter = $("#topics-filter").value.trim() || "#";
  topicsLive = new EventSource(`/api/v1/watch?filter=${encodeURIComponent(filter)}`);
  let dirty = false;
  topicsLive.addEventListener("message", (ev) => { const m = JSON.parse(ev.data); topicNode(m.topic)["\u0001"] = m; dirty = true; });
  topicsLive.timer = setInterval(() => { if (dirty) { dirty = false; drawTopics(); } }, 1000);
  $("#topics-live").textContent = "Stop live topics";
  $("#topics-status").textContent = `watching ${filter}`;
}
function stopTopicsLive() {
  if (!topicsLive) return;
  clearInterval(topicsLive.timer);
  topicsLive.close();
  topicsLive = null;
  $("#topics-live").textContent = "Add topics seen live";
  $("#topics-status").textContent = "";
}
async function showRetained(topic) {
  try {
    const m = await api(`/retained/${topic.split("/").map(encodeURIComponent).join("/")}`);
    $("#topic-name").textContent = `${m.topic} (QoS ${m.qos}, ${m.payload_size} bytes${m.content_type ? ", " + m.content_type : ""})`;
    $("#topic-payload").textContent = preview(m.payload, m.payload_encoding);
    const del = $("#topic-delete");
    del.hidden = false;
    del.onclick = async () => {
      if (!confirm(`Delete the retained message on ${topic}?`)) return;
      try { await api(`/retained/${topic.split("/").map(encodeURIComponent).join("/")}`, { method: "DELETE" }); del.hidden = true; $("#topic-payload").textContent = ""; $("#topic-name").textContent = ""; loadTopics(); } catch (e) { showError(e.message); }
    };
  } catch (e) { showError(e.message); }
}

// ---- watch a filter (server-sent events) ----
let watch = null;
function startWatch() {
  const filter = $("#watch-filter").value.trim();
  if (!filter) return;
  stopWatch();
  $("#watch-table tbody").replaceChildren();
  watch = new EventSource(`/api/v1/watch?filter=${encodeURIComponent(filter)}`);
  watch.addEventListener("message", (ev) => {
    const m = JSON.parse(ev.data);
    const body = $("#watch-table tbody");
    const text = m.payload_encoding === "base64" ? hex(b64bytes(m.payload)) : m.payload;
    body.prepend(el("tr", {}, el("td", {}, new Date(m.at).toLocaleTimeString()), el("td", {}, m.topic), el("td", {}, m.qos), el("td", {}, m.retain ? "yes" : ""), el("td", { class: "payload", title: text }, text)));
    while (body.rows.length > 500) body.deleteRow(-1);
  });
  watch.addEventListener("error", () => showError("watch: connection lost"));
  $("#watch-start").disabled = true; $("#watch-stop").disabled = false;
}
function stopWatch() {
  if (watch) { watch.close(); watch = null; }
  $("#watch-start").disabled = false; $("#watch-stop").disabled = true;
}

// ---- publish ----
async function publish(ev) {
  ev.preventDefault();
  const f = ev.target;
  const body = { topic: f.topic.value, payload: f.payload.value, qos: Number(f.qos.value), retain: f.retain.checked, properties: {} };
  if (f.content_type.value) body.properties.content_type = f.content_type.value;
  if (f.expiry.value) body.properties.message_expiry_interval = Number(f.expiry.value);
  try {
    const r = await api("/publish", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    $("#publish-result").textContent = `published to ${r.topic}: ${r.sessions_reached} session(s)`;
    showError(null);
  } catch (e) { $("#publish-result").textContent = ""; showError(e.message); }
}

// ---- trace ----
let trace = null;
function startTrace() {
  const id = $("#trace-client").value.trim();
  if (!id) return;
  stopTrace();
  $("#trace-table tbody").replaceChildren();
  trace = new EventSource(`/api/v1/trace/${encodeURIComponent(id)}`);
  trace.addEventListener("started", () => { $("#trace-status").textContent = `tracing ${id}`; });
  trace.addEventListener("lagged", (ev) => { $("#trace-status").textContent = `${JSON.parse(ev.data).lost} packets not shown (too fast)`; });
  trace.addEventListener("packet", (ev) => {
    const p = JSON.parse(ev.data);
    const pv = p.payload_preview ? (p.payload_preview.text ?? hex(b64bytes(p.payload_preview.base64))) : "";
    const body = $("#trace-table tbody");
    body.prepend(el("tr", { "data-type": p.type },
      el("td", {}, new Date(p.at).toLocaleTimeString()), el("td", { class: "dir-" + p.direction }, p.direction), el("td", {}, p.type),
      el("td", {}, p.packet_id ?? ""), el("td", {}, p.qos ?? ""), el("td", {}, p.topic ?? ""),
      el("td", {}, (p.reason_codes || []).map((c) => "0x" + c.toString(16).padStart(2, "0")).join(" ")), el("td", {}, p.size),
      el("td", { class: "payload", title: pv }, pv)));
    while (body.rows.length > 1000) body.deleteRow(-1);
  });
  trace.addEventListener("error", () => { $("#trace-status").textContent = "connection lost"; });
  $("#trace-start").disabled = true; $("#trace-stop").disabled = false;
}
function stopTrace() {
  if (trace) { trace.close(); trace = null; $("#trace-status").textContent = "stopped"; }
  $("#trace-start").disabled = false; $("#trace-stop").disabled = true;
}

// ---- views ----
const loaders = { clients: loadClients, sessions: loadSessions, subscriptions: loadSubscriptions, topics: loadTopics };
let refresh = null;
function route() {
  const view = (location.hash || "#overview").slice(1);
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + view; });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
  clearInterval(refresh);
  if (view !== "topics") stopTopicsLive();
  const load = loaders[view];
  if (load) { load(); if (view !== "topics") refresh = setInterval(load, 2000); }
  if (view === "overview") Object.values(charts).forEach((c) => c.draw());
}

window.addEventListener("hashchange", route);
window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.draw()));
$("#clients-search").addEventListener("input", loadClients);
$("#sessions-search").addEventListener("input", loadSessions);
$("#subs-search").addEventListener("input", loadSubscriptions);
$("#topics-load").addEventListener("click", loadTopics);
$("#topics-live").addEventListener("click", toggleTopicsLive);
$("#watch-start").addEventListener("click", startWatch);
$("#watch-stop").addEventListener("click", stopWatch);
$("#publish-form").addEventListener("submit", publish);
$("#trace-start").addEventListener("click", startTrace);
$("#trace-stop").addEventListener("click", stopTrace);
api("/broker").then((b) => { $("#broker-info").textContent = `v${b.version} · ${b.listeners.map((l) => l.kind + " " + l.address).join(", ")}`; }).catch(() => {});
route();
poll();
setInterval(poll, 1000);
