// The dashboard's script: forms and buttons call the API with the CSRF header, the
// capsule list follows the event stream, the terminal speaks the PTY WebSocket, the
// file browser calls the SDK's file routes, the capsule's charts are drawn as inline SVG
// from its metrics, its processes are listed and killed, and a build's output is followed.
// Guest text is only ever set as textContent.
"use strict";

function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}

function showError(message) {
  const box = document.querySelector("[data-error]");
  if (!box) { alert(message); return; }
  box.textContent = message;
  box.hidden = false;
  box.focus();
}

async function call(method, url, body) {
  const headers = { "X-CSRF-Token": cookie("wrenn_csrf") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let message = method + " " + url + ": " + response.status;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response.status === 204 ? null : response.json();
}

function then(target, result) {
  if (target === "reload") location.reload();
  else if (target === "stay") refreshCapsules();
  else if (target === "build") location.assign("/builds/" + encodeURIComponent(result.id));
  else if (target === "show-key") {
    document.querySelector("[data-new-key-value]").textContent = result.key;
    document.querySelector("[data-new-key]").hidden = false;
  } else if (target) location.assign(target);
}

function formBody(form) {
  const body = {};
  for (const field of form.elements) {
    if (!field.name) continue;
    body[field.name] = field.hasAttribute("data-int") ? Number(field.value) : field.value;
  }
  return body;
}

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-form]");
  if (!form) return;
  event.preventDefault();
  const button = form.querySelector("button[type=submit]");
  if (button) button.disabled = true;
  try {
    then(form.dataset.then, await call("POST", form.dataset.url, formBody(form)));
  } catch (error) {
    showError(error.message);
  } finally {
    if (button) button.disabled = false;
  }
});

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  if (button.dataset.confirm && !confirm(button.dataset.confirm)) return;
  button.disabled = true;
  try {
    then(button.dataset.then || "stay", await call(button.dataset.action, button.dataset.url));
  } catch (error) {
    showError(error.message);
    button.disabled = false;
  }
});

document.addEventListener("change", async (event) => {
  const select = event.target.closest("select[data-switch-team]");
  if (!select) return;
  try {
    await call("POST", "/api/v1/auth/switch-team", { team_id: select.value });
    location.assign("/capsules");
  } catch (error) {
    showError(error.message);
  }
});

// -- the live capsule list ------------------------------------------------------------
let refreshing = null;
async function refreshCapsules() {
  const rows = document.getElementById("capsule-rows");
  if (!rows) return;
  if (refreshing) return refreshing;  // one fetch at a time; events come in bursts
  refreshing = (async () => {
    try {
      const response = await fetch(rows.dataset.live, { credentials: "same-origin" });
      if (response.status === 401) { location.assign("/signin"); return; }
      if (response.ok) rows.innerHTML = await response.text();
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

function followEvents() {
  if (!document.getElementById("capsule-rows")) return;
  const stream = new EventSource("/api/v1/events/stream");
  const kinds = ["capsule.create", "capsule.pause", "capsule.resume", "capsule.destroy",
    "capsule.state.changed", "connected"];
  for (const kind of kinds) stream.addEventListener(kind, () => refreshCapsules());
  // The stream ends when the session does; the browser reconnects, and a 401 shows why.
  stream.onerror = () => refreshCapsules();
}

// -- the terminal ---------------------------------------------------------------------
function openTerminal() {
  const box = document.getElementById("terminal");
  if (!box || !window.Terminal) return;
  const term = new window.Terminal({ cursorBlink: true, convertEol: false });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = scheme + "//" + location.host + "/api/v1/capsules/" + box.dataset.capsuleId + "/pty";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: "start", cmd: "/bin/bash", cols: term.cols, rows: term.rows }));
  };
  ws.onmessage = (message) => {
    if (typeof message.data !== "string") { term.write(new Uint8Array(message.data)); return; }
    const frame = JSON.parse(message.data);
    if (frame.type === "ping") ws.send(JSON.stringify({ type: "pong" }));
    else if (frame.type === "exit") term.write("\r\n[exited " + frame.exit_code + "]\r\n");
    else if (frame.type === "error") term.write("\r\n[" + frame.data + "]\r\n");
  };
  ws.onclose = () => term.write("\r\n[disconnected]\r\n");
  term.onData((data) => { if (ws.readyState === 1) ws.send(encoder.encode(data)); });
  const resize = () => {
    fit.fit();
    if (ws.readyState === 1) ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
  };
  window.addEventListener("resize", resize);
  term.focus();
}

// -- the file browser -------------------------------------------------------------------
// Every act is the SDK's own route (/api/v1/capsules/{id}/files/...), path in the body.
function parentOf(path) {
  const trimmed = path.replace(/\/+$/, "");
  const cut = trimmed.lastIndexOf("/");
  return cut <= 0 ? "/" : trimmed.slice(0, cut);
}

function joinPath(dir, name) {
  return (dir.endsWith("/") ? dir : dir + "/") + name;
}

function openFiles() {
  const box = document.getElementById("files");
  if (!box) return;
  const base = "/api/v1/capsules/" + encodeURIComponent(box.dataset.capsuleId) + "/files/";
  const pathField = box.querySelector("[data-files-path]");
  const rows = box.querySelector("[data-file-rows]");
  const status = box.querySelector("[data-files-status]");
  let current = box.dataset.start || "/";

  function button(label, onClick, danger) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (danger) b.className = "danger";
    b.addEventListener("click", onClick);
    return b;
  }

  function row(entry) {
    const tr = document.createElement("tr");
    tr.dataset.fileEntry = entry.path;
    const isDir = entry.type === "dir" || entry.type === "directory";
    const name = document.createElement("td");
    if (isDir) name.append(button(entry.name + "/", () => list(entry.path)));
    else name.textContent = entry.name;
    const size = document.createElement("td");
    size.textContent = isDir ? "" : String(entry.size);
    const perms = document.createElement("td");
    perms.textContent = entry.permissions;
    const acts = document.createElement("td");
    if (!isDir) acts.append(button("Download", () => download(entry)));
    acts.append(button("Delete", () => remove(entry), true));
    tr.append(name, size, perms, acts);
    return tr;
  }

  async function list(path) {
    try {
      const found = await call("POST", base + "list", { path, depth: 1 });
      current = path;
      pathField.value = path;
      rows.replaceChildren(...found.entries.map(row));
      status.textContent = found.entries.length ? "" : "This folder is empty.";
    } catch (error) {
      showError(error.message);
    }
  }

  async function download(entry) {
    try {
      const response = await fetch(base + "read", {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRF-Token": cookie("wrenn_csrf"), "Content-Type": "application/json" },
        body: JSON.stringify({ path: entry.path }),
      });
      if (!response.ok) throw new Error(await failure(response, "download"));
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = entry.name;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (error) {
      showError(error.message);
    }
  }

  async function remove(entry) {
    if (!confirm("Delete " + entry.path + "?")) return;
    try {
      await call("POST", base + "remove", { path: entry.path });
      await list(current);
    } catch (error) {
      showError(error.message);
    }
  }

  box.querySelector("[data-files-go]").addEventListener("submit", (event) => {
    event.preventDefault();
    list(pathField.value);
  });
  box.querySelector("[data-files-up]").addEventListener("click", () => list(parentOf(current)));
  box.querySelector("[data-files-upload]").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const file = form.elements.file.files[0];
    if (!file) return;
    // The control plane streams the upload, so the path part must come before the file.
    const body = new FormData();
    body.append("path", joinPath(current, file.name));
    body.append("file", file);
    try {
      const response = await fetch(base + "write", {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRF-Token": cookie("wrenn_csrf") }, body,
      });
      if (!response.ok) throw new Error(await failure(response, "upload"));
      form.reset();
      await list(current);
    } catch (error) {
      showError(error.message);
    }
  });
  list(current);
}

async function failure(response, what) {
  try { return (await response.json()).error.message; } catch (e) { return what + ": " + response.status; }
}

// -- the capsule's charts ----------------------------------------------------------------
// `GET /api/v1/capsules/{id}/metrics?range=` over the host's rings (10 min at 5 s steps,
// 2 h at 1 min, 24 h at 10 min); each chart is redrawn at its ring's step.
const SVG_NS = "http://www.w3.org/2000/svg";
const RANGE_SECONDS = { "10m": 600, "2h": 7200, "24h": 86400 };
const RANGE_STEP_MS = { "10m": 5000, "2h": 60000, "24h": 600000 };
const MIB = 1024 * 1024;

function svg(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceCeiling(value) {  // 1, 2 or 5 × 10^k, as charts.py's
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function short(value) {  // an axis label: whole from 100, one decimal from 1, else two digits
  if (value >= 100) return String(Math.round(value));
  if (value >= 1 || value === 0) return String(Math.round(value * 10) / 10);
  if (value < 0.01) return value.toExponential(0);  // "1e-6": "0.000001" would not fit
  return String(Number(value.toPrecision(2)));
}

// One series: `lineChart(box, "CPU %", points, range)`; several, on one scale:
// `lineChart(box, "Network KiB/s", [{ name: "received", cls: "rx", points }, …], range)`.
function lineChart(box, caption, pointsOrLines, range) {
  const lines = pointsOrLines.length && pointsOrLines[0].points
    ? pointsOrLines
    : [{ name: "", cls: "", points: pointsOrLines }];
  const W = 320, H = 130, L = 36, R = 6, T = 8, B = 18;
  const span = RANGE_SECONDS[range];
  const all = lines.flatMap((line) => line.points);
  const end = Math.max(0, ...all.map((p) => p.t));
  const top = niceCeiling(Math.max(0, ...all.map((p) => p.v)));
  const x = (t) => L + (W - L - R) * (1 - (end - t) / span);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const latest = lines.map((line) => {
    const last = line.points.length ? short(line.points[line.points.length - 1].v) : "none";
    return line.name ? `${line.name} ${last}` : last;
  }).join(", ");
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart",
    "aria-label": `${caption}, last ${range}: latest ${latest}, scale 0 to ${short(top)}`,
  });
  chart.append(
    svg("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), class: "axis" }),
    svg("line", { x1: L, y1: y(top), x2: W - R, y2: y(top), class: "grid" }),
    svg("text", { x: L - 4, y: y(top) + 4, "text-anchor": "end" }, short(top)),
    svg("text", { x: L - 4, y: y(0) + 4, "text-anchor": "end" }, "0"),
    svg("text", { x: L, y: H - 4 }, "−" + range),
    svg("text", { x: W - R, y: H - 4, "text-anchor": "end" }, "now"),
  );
  for (const line of lines.filter((l) => l.points.length)) {
    const drawn = line.points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", { points: drawn, class: ("series " + line.cls).trim() }));
    if (line.points.length === 1) {  // a one-point polyline draws nothing: mark the point
      const [p] = line.points;
      chart.append(svg("circle", { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2.5, class: ("dot " + line.cls).trim() }));
    }
  }
  if (!all.length) {
    chart.append(svg("text", { x: (W + L) / 2, y: H / 2, "text-anchor": "middle" }, "no samples yet"));
  }
  box.replaceChildren(chart);
}

// Bytes per second in the binary unit the peak reaches, so the axis reads "2" MiB/s, not
// "2097152" B/s; every line of a chart shares the one unit.
const RATE_UNITS = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
function rateUnit(peak) {
  let power = 0;
  while (power < RATE_UNITS.length - 1 && peak >= Math.pow(1024, power + 1)) power++;
  return { name: RATE_UNITS[power], divisor: Math.pow(1024, power) };
}

// The guest's receive and transmit rates; points the host did not measure (null: its
// first sample, or an older host) are left out rather than drawn as zero.
function networkChart(box, points, range) {
  const measured = (key) => points
    .filter((p) => typeof p[key] === "number")
    .map((p) => ({ t: p.timestamp_unix, v: p[key] }));
  const rx = measured("net_rx_bps"), tx = measured("net_tx_bps");
  const unit = rateUnit(Math.max(0, ...rx.map((p) => p.v), ...tx.map((p) => p.v)));
  const scaled = (line) => line.map((p) => ({ t: p.t, v: p.v / unit.divisor }));
  box.closest("figure").querySelector("[data-unit]").textContent = unit.name;
  lineChart(box, "Network " + unit.name, [
    { name: "received", cls: "rx", points: scaled(rx) },
    { name: "sent", cls: "tx", points: scaled(tx) },
  ], range);
}

function openMetrics() {
  const box = document.getElementById("metrics");
  if (!box) return;
  const url = "/api/v1/capsules/" + encodeURIComponent(box.dataset.capsuleId) + "/metrics?range=";
  let timer = null;
  async function draw() {
    const range = box.dataset.range;
    clearTimeout(timer);
    try {
      const found = await call("GET", url + encodeURIComponent(range));
      const series = (pick) => found.points.map((p) => ({ t: p.timestamp_unix, v: pick(p) }));
      lineChart(box.querySelector("[data-chart=cpu]"), "CPU %", series((p) => p.cpu_pct), range);
      lineChart(box.querySelector("[data-chart=memory]"), "Memory MiB", series((p) => p.mem_bytes / MIB), range);
      lineChart(box.querySelector("[data-chart=disk]"), "Disk MiB", series((p) => p.disk_bytes / MIB), range);
      networkChart(box.querySelector("[data-chart=network]"), found.points, range);
      box.dataset.drawn = range;
    } catch (error) {
      showError(error.message);
      return;  // a paused or destroyed capsule has no metrics: stop asking
    }
    timer = setTimeout(draw, RANGE_STEP_MS[range]);
  }
  for (const button of box.querySelectorAll("[data-metrics-range]")) {
    button.addEventListener("click", () => {
      for (const other of box.querySelectorAll("[data-metrics-range]")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
      box.dataset.range = button.dataset.metricsRange;
      draw();
    });
  }
  draw();
}

// -- the capsule's processes -------------------------------------------------------------
function openProcesses() {
  const box = document.getElementById("processes");
  if (!box) return;
  const base = "/api/v1/capsules/" + encodeURIComponent(box.dataset.capsuleId) + "/processes";
  const rows = box.querySelector("[data-process-rows]");
  const status = box.querySelector("[data-processes-status]");

  function row(process) {
    const tr = document.createElement("tr");
    tr.dataset.pid = String(process.pid);
    const command = [process.cmd, ...(process.args || [])].join(" ");
    for (const text of [String(process.pid), process.tag || "", command]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    const acts = document.createElement("td");
    const kill = document.createElement("button");
    kill.type = "button";
    kill.className = "danger";
    kill.textContent = "Kill";
    kill.addEventListener("click", async () => {
      if (!confirm("Kill process " + process.pid + " (" + command + ")?")) return;
      kill.disabled = true;
      try {
        await call("DELETE", base + "/" + process.pid);
        await load();
      } catch (error) {
        showError(error.message);
        kill.disabled = false;
      }
    });
    acts.append(kill);
    tr.append(acts);
    return tr;
  }

  async function load() {
    try {
      const found = await call("GET", base);
      rows.replaceChildren(...found.processes.map(row));
      status.textContent = found.processes.length ? "" : "No processes.";
    } catch (error) {
      showError(error.message);
    }
  }
  box.querySelector("[data-processes-refresh]").addEventListener("click", load);
  load();
}

// -- a build's output, followed ----------------------------------------------------------
// `GET /api/v1/builds/{id}/logs?after=N` pages through the stored lines; polled once a
// second until the build ends, then the page reloads once to show how it ended.
const BUILD_POLL_MS = 1000;

function followBuild() {
  const log = document.getElementById("build-log");
  if (!log) return;
  const url = "/api/v1/builds/" + encodeURIComponent(log.dataset.buildId) + "/logs?after=";
  let cursor = 0;
  async function poll() {
    let page;
    try {
      page = await call("GET", url + cursor);
    } catch (error) {
      showError(error.message);
      return;
    }
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    for (const line of page.lines) {
      const span = document.createElement("span");
      span.className = "log-" + line.stream;
      span.textContent = line.text;
      log.append(span);
    }
    if (atEnd) log.scrollTop = log.scrollHeight;
    cursor = page.next;
    if (!page.done) setTimeout(poll, BUILD_POLL_MS);
    else if (log.dataset.active === "true") location.reload();
    else log.dataset.complete = "true";
  }
  poll();
}

followEvents();
openTerminal();
openFiles();
openMetrics();
openProcesses();
followBuild();
