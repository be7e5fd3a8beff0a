// The dashboard's script: forms and buttons call the API with the CSRF header, the
// capsule list follows the event stream, and the terminal speaks the PTY WebSocket.
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

followEvents();
openTerminal();
