// The control page: a client of vp ui's JSON API. Every state-changing request carries the
// session's CSRF token (X-CSRF-Token), which the server rendered into the page's meta tag.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const $ = (sel) => document.querySelector(sel);
let apps = [];
let logSource = null;
let idle = null; // {limit, touched}: the countdown

function say(text, error) {
  const m = $("#message");
  m.textContent = text || "";
  m.className = error ? "error" : "";
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "X-CSRF-Token": CSRF, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    location.href = "/login?next=/";
    throw new Error("logged out");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new Error((data.error || response.statusText) + (data.hint ? " (" + data.hint + ")" : ""));
    err.status = response.status;
    throw err;
  }
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c === null || c === undefined ? "" : c);
  return node;
}

function seconds(value) { // an epoch number (older records) or an ISO time
  if (value === null || value === undefined) return null;
  return typeof value === "number" ? value : Date.parse(value) / 1000;
}

function duration(s) {
  if (s === null || s === undefined) return "-";
  s = Math.max(0, s);
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s";
  const n = Math.floor(s);
  if (n < 3600) return Math.floor(n / 60) + "m " + String(n % 60).padStart(2, "0") + "s";
  if (n < 86400) return Math.floor(n / 3600) + "h " + String(Math.floor(n % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(n / 86400) + "d " + String(Math.floor(n % 86400 / 3600)).padStart(2, "0") + "h";
}

function money(x) { return x === null || x === undefined ? "-" : "$" + (x >= 0.1 || x === 0 ? x.toFixed(2) : x.toFixed(4)); }

// ---------------------------------------------------------------------------- hosts

async function hostAction(host, action, button) {
  if (action === "down" && !confirm(`Destroy ${host.name} (${host.id}) on ${host.platform} and its disk?`)) return;
  button.disabled = true;
  const row = button.closest("tr");
  row.querySelector(".status").textContent = { start: "starting", stop: "stopping", down: "destroying" }[action] + "…";
  say(`${action} ${host.name}…`);
  try {
    await api("POST", `/api/hosts/${encodeURIComponent(host.name)}/${action}?platform=${encodeURIComponent(host.platform)}`);
    say(`${host.name}: ${action} done`);
  } catch (e) {
    say(e.message, true);
  }
  await loadHosts();
}

function hostRow(h) {
  const now = Date.now() / 1000;
  const price = h.price_per_hour ?? h.price ?? null;
  const created = seconds(h.created_at);
  const uptime = h.uptime_s ?? (created ? now - created : null);
  const cost = h.cost_usd ?? (uptime !== null && price !== null ? uptime / 3600 * price : null);
  const running = h.status === "running";
  const cloud = !["local", "ssh"].includes(h.platform);
  const actions = el("td", { class: "actions" });
  if (h.status === "stopped") actions.append(el("button", { class: "start", onclick: (e) => hostAction(h, "start", e.target) }, "Start"));
  if (running && cloud) actions.append(el("button", { class: "stop", onclick: (e) => hostAction(h, "stop", e.target) }, "Stop"));
  if (cloud) actions.append(" ", el("button", { class: "destroy danger", onclick: (e) => hostAction(h, "down", e.target) }, "Destroy"));
  const links = el("td", { class: "apps" });
  if (running) for (const a of apps) links.append(el("a", { class: "app", href: a.url, target: "_blank", rel: "noopener" }, a.name));
  return el("tr", { "data-name": h.name, "data-platform": h.platform },
    el("td", {}, h.platform),
    el("td", { class: "name", title: h.id }, h.name),
    el("td", { class: "status status-" + h.status }, h.status),
    el("td", {}, h.gpu ? `${h.gpus || 1}× ${h.gpu}` : "-"),
    el("td", {}, price === null ? "-" : price.toFixed(2)),
    el("td", {}, running || uptime !== null ? duration(uptime) : "-"),
    el("td", {}, money(cost)),
    links,
    actions);
}

async function loadSpend() {
  try {
    const s = await api("GET", "/api/spend");
    $("#spend").textContent = `spent today ${money(s.today)}, this month ${money(s.month)}; billing now ${money(s.per_hour)}/h`;
  } catch (e) { say(e.message, true); }
}

async function loadHosts() {
  loadSpend();
  try {
    const hosts = await api("GET", "/api/hosts");
    const body = $("#hosts tbody");
    body.replaceChildren(...(hosts.length ? hosts.map(hostRow) : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no hosts"))]));
  } catch (e) { say(e.message, true); }
}

// ---------------------------------------------------------------------------- runs

function runRow(r) {
  const started = r.started_at ? new Date(r.started_at).toLocaleString() : (r.started || "-");
  const dur = r.duration_s ?? r.duration ?? null;
  const row = el("tr", { class: "run", "data-id": r.id, onclick: () => showLog(r.id, r.command) },
    el("td", {}, r.id),
    el("td", { class: "command" }, r.command),
    el("td", {}, r.host_name),
    el("td", {}, started),
    el("td", {}, dur === null ? "-" : duration(dur)),
    el("td", { class: "exit" }, r.exit_code ?? "-"),
    el("td", { class: "status status-" + r.status }, r.status));
  if (r.id === currentRun) row.classList.add("selected");
  return row;
}

let currentRun = null;

async function loadRuns() {
  try {
    const runs = await api("GET", "/api/runs?limit=20");
    $("#runs tbody").replaceChildren(...(runs.length ? runs.map(runRow) : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no runs yet"))]));
  } catch (e) { say(e.message, true); }
}

function showLog(id, command) {
  if (logSource) logSource.close();
  currentRun = id;
  $("#log-box").hidden = false;
  $("#log-title").textContent = `Log of ${id}: ${command}`;
  const log = $("#log");
  log.textContent = "";
  log.dataset.state = "following";
  logSource = new EventSource(`/api/runs/${encodeURIComponent(id)}/log?follow=1`);
  logSource.onmessage = (e) => {
    const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent += JSON.parse(e.data);
    if (stick) log.scrollTop = log.scrollHeight;
  };
  logSource.addEventListener("end", () => { logSource.close(); log.dataset.state = "ended"; loadRuns(); });
  logSource.onerror = () => { if (logSource.readyState === EventSource.CLOSED) log.dataset.state = "error"; };
  for (const tr of document.querySelectorAll("tr.run")) tr.classList.toggle("selected", tr.dataset.id === id);
}

async function startRun(event) {
  event.preventDefault();
  const command = $("#command").value.trim();
  if (!command) return;
  const button = $("#run-button");
  button.disabled = true;
  say("starting: " + command);
  try {
    const { id } = await api("POST", "/api/runs", { command });
    say(`run ${id} started`);
    await loadRuns();
    showLog(id, command);
  } catch (e) { say(e.message, true); }
  button.disabled = false;
}

// ---------------------------------------------------------------------------- idle stop

let keepTimer = null;

async function keepalive() {
  clearTimeout(keepTimer);
  let next = 20;
  try {
    const s = await api("POST", "/api/keepalive");
    if (s.idle_stop_s) {
      idle = { limit: s.idle_stop_s, touched: Date.now() / 1000 - (s.idle_stop_s - s.remaining_s), host: s.host };
      next = Math.max(1, Math.min(20, s.idle_stop_s / 3));
    } else {
      idle = { off: true, host: s.host };
    }
  } catch (e) {
    idle = { error: e.status === 409 ? "no running host" : e.message };
  }
  drawIdle();
  keepTimer = setTimeout(keepalive, next * 1000);
}

function drawIdle() {
  const box = $("#idle");
  if (!idle) return;
  if (idle.error) box.textContent = "idle stop: " + idle.error;
  else if (idle.off) box.textContent = `${idle.host}: no idle stop`;
  else {
    const left = idle.limit - (Date.now() / 1000 - idle.touched);
    box.textContent = `${idle.host} stops when idle in ${duration(Math.max(0, left))}`;
  }
}

// ---------------------------------------------------------------------------- start

async function main() {
  $("#run-form").addEventListener("submit", startRun);
  $("#keep").addEventListener("click", keepalive);
  $("#logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" });
    location.href = "/login";
  });
  try { apps = await api("GET", "/api/apps"); } catch (e) { apps = []; }
  await Promise.all([loadHosts(), loadRuns()]);
  keepalive();
  setInterval(drawIdle, 1000);
  setInterval(loadHosts, 10000);
  setInterval(loadRuns, 5000);
}

main();
