// The dashboard's script: forms and buttons call the API with the CSRF header, the
// capsule list follows the event stream, the terminal speaks the PTY WebSocket, and the
// file browser calls the SDK's file routes. Guest text is only ever set as textContent.
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

followEvents();
openTerminal();
openFiles();
