// Trellis dashboard. Plain JS, no build step. Everything it shows comes from the server's
// snapshot and event stream; text is always inserted as text (never as HTML).
"use strict";

const state = {
  snapshot: null,
  rendered: {},            // section -> JSON last rendered, to skip unchanged sections
  heartbeats: {},          // host id -> { age: ms at `at`, at: performance.now() }
  events: [],              // newest last
};
const MAX_EVENTS = 500;
const STALE_HEARTBEAT_MS = 30000;

// ---- small DOM helpers ----------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") el.textContent = v;
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) if (c) el.append(c);
  return el;
}

const $ = (id) => document.getElementById(id);

function replace(id, ...children) {
  const el = $(id);
  // Keep keyboard focus where it was when the section is redrawn.
  const focused = document.activeElement && el.contains(document.activeElement) ? document.activeElement : null;
  const focusId = focused && focused.id;
  const focusValue = focused && "value" in focused ? focused.value : null;
  el.replaceChildren(...children.flat(Infinity));
  if (focusId) {
    const again = document.getElementById(focusId);
    if (again) {
      if (focusValue !== null && "value" in again) again.value = focusValue;
      again.focus();
    }
  }
}

function changed(section, value) {
  const json = JSON.stringify(value);
  if (state.rendered[section] === json) return false;
  state.rendered[section] = json;
  return true;
}

function badge(text, kind) {
  return h("span", { class: "badge " + (kind || text), text });
}

function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400), hr = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function shortId(id) {
  return id && id.length > 16 ? id.slice(0, 12) + "…" : id;
}

// ---- server calls ---------------------------------------------------------------------------

async function post(url, body, contentType) {
  const headers = { "x-trellis-ui": "1" };
  if (contentType) headers["content-type"] = contentType;
  let response;
  try {
    response = await fetch(url, { method: "POST", headers, body, credentials: "same-origin" });
  } catch (e) {
    return { ok: false, error: "the dashboard server did not answer: " + e.message };
  }
  try {
    return await response.json();
  } catch (e) {
    return { ok: false, error: `unexpected answer (${response.status})` };
  }
}

function confirmAction(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

// ---- rendering ------------------------------------------------------------------------------

function render(snapshot) {
  state.snapshot = snapshot;
  $("lattice").textContent = snapshot.lattice;
  $("nats").textContent = "at " + snapshot.nats_url;
  const now = performance.now();
  for (const host of snapshot.hosts) {
    if (host.heartbeat_age_ms !== null && host.heartbeat_age_ms !== undefined) {
      const known = state.heartbeats[host.id];
      const fresh = { age: host.heartbeat_age_ms, at: now };
      if (!known || heartbeatAge(known) > fresh.age) state.heartbeats[host.id] = fresh;
    }
  }
  renderProblems(snapshot.problems);
  renderHosts(snapshot.hosts);
  renderApps(snapshot.apps);
  renderWorkloads(snapshot);
  renderLinks(snapshot);
  renderConfigs(snapshot.configs);
}

function renderProblems(problems) {
  if (!changed("problems", problems)) return;
  const el = $("problems");
  el.hidden = problems.length === 0;
  replace("problems", h("strong", { text: "Some of the lattice could not be read: " }),
    h("ul", {}, problems.map((p) => h("li", { text: p }))));
}

function heartbeatAge(entry) {
  return entry.age + (performance.now() - entry.at);
}

function heartbeatText(hostId) {
  const entry = state.heartbeats[hostId];
  if (!entry) return { text: "no heartbeat seen yet", stale: false };
  const age = heartbeatAge(entry);
  return { text: duration(age / 1000) + " ago", stale: age > STALE_HEARTBEAT_MS };
}

function tickHeartbeats() {
  for (const el of document.querySelectorAll("[data-hb-host]")) {
    const { text, stale } = heartbeatText(el.dataset.hbHost);
    el.textContent = text;
    el.classList.toggle("badge", stale);
    el.classList.toggle("stale", stale);
  }
}

function renderHosts(hosts) {
  $("hosts-count").textContent = `(${hosts.length})`;
  // Uptime changes every snapshot; compare without it so an idle page is not redrawn.
  if (!changed("hosts", hosts.map((x) => ({ ...x, uptime_seconds: 0, heartbeat_age_ms: 0 })))) {
    for (const host of hosts) {
      const up = document.querySelector(`[data-uptime-host="${CSS.escape(host.id)}"]`);
      if (up) up.textContent = duration(host.uptime_seconds);
    }
    return;
  }
  if (hosts.length === 0) {
    replace("hosts-list", h("p", { class: "muted", text: "No host answers in this lattice. Start one with `trellis up` or `trellis host`." }));
    return;
  }
  replace("hosts-list", hosts.map((host) => {
    const labels = Object.entries(host.labels || {});
    const user = labels.filter(([k]) => !k.startsWith("hostcore."));
    const core = labels.filter(([k]) => k.startsWith("hostcore."));
    const hb = heartbeatText(host.id);
    return h("article", { class: "card host", "data-host-id": host.id, "aria-label": "host " + host.name },
      h("h3", {}, host.name),
      h("dl", {},
        h("dt", { text: "id" }), h("dd", { class: "mono", text: host.id }),
        h("dt", { text: "version" }), h("dd", { text: host.version || "—" }),
        h("dt", { text: "uptime" }), h("dd", { "data-uptime-host": host.id, text: duration(host.uptime_seconds) }),
        h("dt", { text: "heartbeat" }), h("dd", { "data-hb-host": host.id, class: hb.stale ? "badge stale" : "", text: hb.text }),
        h("dt", { text: "labels" }), h("dd", {}, user.length ? user.map(([k, v]) => h("code", {}, `${k}=${v} `)) : h("span", { class: "muted", text: "none" }),
          core.length ? h("details", {}, h("summary", { text: `${core.length} built-in` }), core.map(([k, v]) => h("div", { class: "mono", text: `${k}=${v}` }))) : null),
        h("dt", { text: "runs" }), h("dd", {},
          host.components.length + host.providers.length === 0 ? h("span", { class: "muted", text: "nothing" }) :
            h("ul", {},
              host.components.map(([id, max]) => h("li", {}, h("code", { text: id }), ` component, max ${max}`)),
              host.providers.map((id) => h("li", {}, h("code", { text: id }), " provider"))))));
  }));
}

function renderApps(apps) {
  $("apps-count").textContent = `(${apps.length})`;
  if (!changed("apps", apps)) return;
  if (apps.length === 0) {
    replace("apps-list", h("p", { class: "muted", text: "No apps stored. Deploy one below or with `trellis app deploy FILE`." }));
    return;
  }
  replace("apps-list", apps.map((app) => {
    const undeploy = h("button", { type: "button", onclick: () => appAction(app.name, "undeploy", undeploy) }, "Undeploy");
    const del = h("button", { type: "button", class: "danger", onclick: () => appAction(app.name, "delete", del) }, "Delete");
    return h("article", { class: "app", "data-app": app.name, "aria-label": "app " + app.name },
      h("header", {},
        h("h3", {}, app.name),
        h("span", { class: "badge app-status " + app.status, "data-status": app.status, text: app.status }),
        h("span", { class: "muted" }, app.deployed_version ? `deployed ${app.deployed_version}` : "not deployed",
          app.latest_version && app.latest_version !== app.deployed_version ? `, latest ${app.latest_version}` : ""),
        h("div", { class: "actions" }, undeploy, del)),
      app.description ? h("p", { text: app.description }) : null,
      app.message ? h("p", { class: "diag", text: app.message }) : null,
      app.urls.length ? h("p", {}, "HTTP: ", app.urls.filter((u) => /^https?:\/\//.test(u)).map((u) => [h("a", { href: u, rel: "noopener" }, u), " "])) : null,
      app.scalers.length ? h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Scaler", "Manages", "Status", "Reason"].map((t) => h("th", { scope: "col", text: t })))),
        h("tbody", {}, app.scalers.map((s) => h("tr", {},
          h("td", { text: s.kind }), h("td", { class: "mono", text: s.name }),
          h("td", {}, badge(s.status.type || "unknown")), h("td", { text: s.status.message || "" })))))) : null,
      app.manifest ? h("details", {}, h("summary", { text: "Manifest" }), h("pre", { class: "mono", text: app.manifest })) : null);
  }));
}

async function appAction(name, action, button) {
  const what = action === "delete"
    ? `Delete every stored version of app “${name}”? If it is deployed, it is undeployed too.`
    : `Undeploy app “${name}”? Its components, providers and links are removed; its versions stay stored.`;
  if (!(await confirmAction(what))) return;
  button.disabled = true;
  const result = await post(`/api/apps/${encodeURIComponent(name)}/${action}`);
  button.disabled = false;
  const text = result.ok
    ? (action === "delete" ? `${name}: ${result.message || "deleted"}` : `${name} is ${result.status}`)
    : `${name}: ${result.error || result.message || result.status || "failed"}`;
  showToast(text, result.ok);
}

function showToast(text, ok) {
  const el = $("conn");
  el.textContent = text;
  el.classList.toggle("live", !!ok);
  clearTimeout(showToast.timer);
  showToast.timer = setTimeout(() => setConnection(state.connected), 8000);
}

function renderWorkloads(snapshot) {
  const workloads = snapshot.workloads;
  $("workloads-count").textContent = `(${workloads.length})`;
  $("metrics-note").textContent = snapshot.metrics_enabled
    ? "Rates come from the hosts' metrics endpoints, over the last few seconds (shown after two readings)."
    : "Request rates need a host metrics endpoint (`trellis ui --metrics-url`; `trellis up` sets one up).";
  if (!changed("workloads", workloads)) return;
  if (workloads.length === 0) {
    replace("workloads-body", h("tr", {}, h("td", { colspan: 7, class: "muted", text: "Nothing runs in this lattice." })));
    return;
  }
  replace("workloads-body", workloads.map((w) => {
    const total = w.placements.reduce((n, p) => n + p.max_instances, 0);
    let health;
    if (w.kind === "provider") {
      // Hosts publish provider health only when it changes, and only for providers that run
      // as their own process; built-in ones live and die with their host.
      const quiet = (w.image_ref || "").startsWith("trellis+builtin://")
        ? "built in: healthy while its host is" : "no health change reported";
      health = w.health ? badge(w.health) : h("span", { class: "muted", text: quiet });
    }
    else if (w.rps !== null && w.rps !== undefined) health = `${w.rps.toFixed(2)} req/s, ${(100 * (w.error_rate || 0)).toFixed(1)}% errors`;
    else health = h("span", { class: "muted", text: "—" });
    return h("tr", { "data-workload": w.id },
      h("td", { text: w.kind }),
      h("td", {}, h("code", { text: w.id }), w.name && w.name !== w.id ? h("div", { class: "muted", text: w.name }) : null),
      h("td", { text: w.app || "—" }),
      h("td", {}, h("div", { class: "mono", text: w.image_ref || "—" }),
        h("div", { class: "muted mono", text: w.digest ? w.digest : "digest not reported" })),
      h("td", {},
        h("ul", {}, w.placements.map((p) => h("li", {}, `${p.host_name || shortId(p.host_id)}: `,
          w.kind === "component" ? `max ${p.max_instances}` : "running"))),
        w.kind === "component" ? h("div", { class: "muted" }, `total ${total}` + (w.requested ? ` of ${w.requested} requested` : "")) : null),
      h("td", {}, health),
      h("td", {}, w.kind === "component" ? w.placements.map((p) => scaleControl(w, p)) : null));
  }));
}

function scaleControl(w, p) {
  const id = `scale-${p.host_id}-${w.id}`.replace(/[^A-Za-z0-9_-]/g, "_");
  const input = h("input", { type: "number", min: 0, max: 10000, value: p.max_instances, id, "aria-label": `max instances of ${w.id} on ${p.host_name}` });
  const button = h("button", { type: "submit" }, "Scale");
  const form = h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    const count = Number(input.value);
    if (!Number.isInteger(count) || count < 0) { showToast("enter a whole number of instances", false); return; }
    if (!(await confirmAction(`Scale component “${w.id}” to ${count} max instances on host ${p.host_name}?` +
      (w.app ? ` It belongs to app “${w.app}”, whose reconciler may scale it back.` : "")))) return;
    button.disabled = true;
    const result = await post("/api/scale", JSON.stringify({ host_id: p.host_id, component_id: w.id, count }), "application/json");
    button.disabled = false;
    showToast(result.ok ? `${w.id}: ${result.confirmed ? "scaled (confirmed by the host)" : "accepted, not yet confirmed"}` : `${w.id}: ${result.error}`, result.ok);
  } }, input, button);
  return form;
}

function renderLinks(snapshot) {
  const links = snapshot.links;
  $("links-count").textContent = `(${links.length})`;
  if (!changed("links", links)) return;
  replace("links-body", links.map((l) => h("tr", {},
    h("td", { class: "mono", text: l.source_id }), h("td", { class: "mono", text: l.target }),
    h("td", { class: "mono", text: `${l.wit_namespace}:${l.wit_package}/${(l.interfaces || []).join(",")}` }),
    h("td", { text: l.name }))));
  replace("graph-wrap", links.length ? linkGraph(links) : h("p", { class: "muted", text: "No links." }));
}

// A layered drawing: nodes with no incoming link on the left, each link's target one column
// right of its source (cycles are cut), links as curves labelled with interface and name.
function linkGraph(links) {
  const ids = [];
  for (const l of links) for (const id of [l.source_id, l.target]) if (!ids.includes(id)) ids.push(id);
  const layer = Object.fromEntries(ids.map((id) => [id, 0]));
  for (let round = 0; round < ids.length; round++) {
    let moved = false;
    for (const l of links) {
      if (l.source_id !== l.target && layer[l.target] < layer[l.source_id] + 1 && layer[l.source_id] + 1 < ids.length) {
        layer[l.target] = layer[l.source_id] + 1; moved = true;
      }
    }
    if (!moved) break;
  }
  const columns = [];
  for (const id of ids) (columns[layer[id]] = columns[layer[id]] || []).push(id);
  const W = 230, H = 40, GX = 240, GY = 56, PAD = 16;
  const pos = {};
  columns.forEach((col, c) => col && col.forEach((id, r) => { pos[id] = { x: PAD + c * (W + GX), y: PAD + r * (H + GY) }; }));
  const width = PAD * 2 + columns.length * W + (columns.length - 1) * GX;
  const height = PAD * 2 + Math.max(...columns.filter(Boolean).map((c) => c.length)) * (H + GY) - GY + 14;
  const kinds = {};
  for (const w of (state.snapshot && state.snapshot.workloads) || []) kinds[w.id] = w.kind;
  const root = svg("svg", { id: "link-graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": `Link graph: ${links.map((l) => `${l.source_id} to ${l.target} over ${l.wit_namespace}:${l.wit_package}`).join("; ")}` },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z" }))));
  const seen = {};
  for (const l of links) {
    const a = pos[l.source_id], b = pos[l.target];
    const key = l.source_id + "\u0000" + l.target;
    const nth = (seen[key] = (seen[key] || 0) + 1) - 1;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const bend = x2 > x1 ? (x2 - x1) / 2 : 80;
    const d = `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
    const label = `${l.wit_namespace}:${l.wit_package}/${(l.interfaces || []).join(",")}` + (l.name && l.name !== "default" ? ` (${l.name})` : "");
    root.append(svg("g", { class: "edge", "data-source": l.source_id, "data-target": l.target },
      svg("path", { d, "marker-end": "url(#arrow)" }),
      svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6 + nth * 13, "text-anchor": "middle", text: label })));
  }
  for (const id of ids) {
    const p = pos[id];
    const text = id.length > 28 ? id.slice(0, 27) + "…" : id;
    root.append(svg("g", { class: "node " + (kinds[id] || ""), "data-id": id },
      svg("title", { text: id + (kinds[id] ? ` (${kinds[id]})` : "") }),
      svg("rect", { x: p.x, y: p.y, width: W, height: H, rx: 6 }),
      svg("text", { x: p.x + 10, y: p.y + H / 2 + 4, text })));
  }
  return root;
}

function renderConfigs(configs) {
  $("configs-count").textContent = `(${configs.length})`;
  if (!changed("configs", configs)) return;
  if (configs.length === 0) {
    replace("configs-list", h("p", { class: "muted", text: "No configs." }));
    return;
  }
  replace("configs-list", configs.map((c) => {
    const entries = Object.entries(c.values);
    return h("article", { class: "card", "data-config": c.name },
      h("h3", { class: "mono", text: c.name }),
      entries.length ? h("dl", {}, entries.map(([k, v]) => [h("dt", { class: "mono", text: k }), h("dd", { class: "mono", text: v })]))
        : h("p", { class: "muted", text: "empty" }));
  }));
}

// ---- events ---------------------------------------------------------------------------------

function addEvent(event) {
  state.events.push(event);
  if (state.events.length > MAX_EVENTS) state.events.shift();
  if (event.name === "host_heartbeat" || event.name === "host_started") {
    state.heartbeats[event.source] = { age: 0, at: performance.now() };
  }
  if (matchesFilter(event)) $("event-log").prepend(eventItem(event));
  const log = $("event-log");
  while (log.children.length > MAX_EVENTS) log.lastChild.remove();
}

function matchesFilter(event) {
  if (event.name === "host_heartbeat" && !$("show-heartbeats").checked) return false;
  const filter = $("event-filter").value.trim().toLowerCase();
  if (!filter) return true;
  return (event.name + " " + event.source + " " + JSON.stringify(event.data)).toLowerCase().includes(filter);
}

function eventItem(event) {
  const when = event.time ? new Date(event.time) : new Date();
  const time = isNaN(when) ? "" : when.toLocaleTimeString();
  return h("li", { "data-event": event.name },
    h("span", { class: "muted" }, time, " "), h("span", { class: "name", text: event.name }), " ",
    h("span", { class: "mono", text: shortId(event.source) }), " ",
    h("span", { class: "mono muted", text: JSON.stringify(event.data) }));
}

function redrawEvents() {
  replace("event-log", state.events.filter(matchesFilter).reverse().map(eventItem));
}

// ---- deploy ---------------------------------------------------------------------------------

async function deploy(e) {
  e.preventDefault();
  const text = $("manifest-text").value;
  if (!text.trim()) { replace("deploy-result", h("p", { class: "bad", text: "Paste or upload a manifest first." })); return; }
  const name = (text.match(/^\s*name:\s*([^\s#]+)/m) || [])[1];
  if (!(await confirmAction(`Deploy ${name ? "app “" + name + "”" : "this manifest"} to lattice ${state.snapshot ? state.snapshot.lattice : ""}?`))) return;
  const button = $("deploy-button");
  button.disabled = true;
  replace("deploy-result", h("p", { text: "Deploying… waiting for the reconciler to report the outcome." }));
  const result = await post("/api/deploy", text, "application/yaml");
  button.disabled = false;
  showDeployResult(result, text);
}

function showDeployResult(result, text) {
  if (result.diagnostics) {
    const errors = result.diagnostics.filter((d) => d.severity === "error");
    const byLine = {};
    for (const d of errors) if (d.line) (byLine[d.line] = byLine[d.line] || []).push(d);
    const lines = text.split("\n");
    replace("deploy-result",
      h("p", { class: "bad", text: `The ${result.stage === "reconciler" ? "reconciler" : "validation"} rejected the manifest:` }),
      h("ul", { class: "diagnostics" }, errors.map((d) => h("li", { class: "diag", "data-line": d.line || "" },
        d.line ? h("a", { href: `#manifest-line-${d.line}` }, `line ${d.line}${d.column ? ", column " + d.column : ""}`) : "manifest",
        d.path ? ` (${d.path})` : "", `: ${d.message}`))),
      h("ol", { class: "lines", "aria-label": "the manifest, with errors at their lines" }, lines.map((line, i) => {
        const n = i + 1, here = byLine[n];
        return h("li", { id: `manifest-line-${n}`, class: here ? "error" : "", "data-line": n, "aria-invalid": here ? "true" : null },
          h("span", { class: "num", text: n }), h("span", { text: line || " " }),
          here ? h("span", { class: "msg", text: "← " + here.map((d) => d.message).join("; ") }) : null);
      })));
    return;
  }
  if (result.outcome) {
    const o = result.outcome;
    const scalers = (o.detail && o.detail.scalers) || [];
    replace("deploy-result",
      h("p", { class: result.ok ? "ok" : "bad", "data-deploy-status": o.status },
        `The lattice reports app ${o.name}${o.version ? " " + o.version : ""} ${o.status}` + (o.message ? `: ${o.message}` : ".")),
      o.urls.length ? h("p", {}, "HTTP: ", o.urls.map((u) => [h("a", { href: u }, u), " "])) : null,
      !result.ok && scalers.length ? h("ul", {}, scalers.filter((s) => s.status.type !== "deployed").map((s) =>
        h("li", {}, `${s.kind} ${s.name}: ${s.status.type}${s.status.message ? " — " + s.status.message : ""}`))) : null);
    return;
  }
  replace("deploy-result", h("p", { class: "bad", "data-deploy-status": "error", text: result.error || "the deploy failed" }));
}

function loadFile() {
  const file = $("manifest-file").files[0];
  if (!file) return;
  if (file.size > 1024 * 1024) { replace("deploy-result", h("p", { class: "bad", text: "That file is larger than 1 MiB." })); return; }
  const reader = new FileReader();
  reader.onload = () => { $("manifest-text").value = String(reader.result); };
  reader.readAsText(file);
}

// ---- live stream ----------------------------------------------------------------------------

function setConnection(live) {
  state.connected = live;
  const el = $("conn");
  el.textContent = live ? "live" : "reconnecting…";
  el.classList.toggle("live", live);
}

function connect() {
  const source = new EventSource("/api/events");
  source.onopen = () => setConnection(true);
  source.onerror = () => setConnection(false); // EventSource retries by itself
  source.addEventListener("snapshot", (e) => { setConnection(true); render(JSON.parse(e.data)); });
  source.addEventListener("lattice", (e) => addEvent(JSON.parse(e.data)));
  source.addEventListener("backlog", (e) => {
    state.events = JSON.parse(e.data);
    redrawEvents();
  });
  source.addEventListener("problem", (e) => renderProblems([JSON.parse(e.data)]));
}

document.addEventListener("DOMContentLoaded", () => {
  $("deploy-form").addEventListener("submit", deploy);
  $("manifest-file").addEventListener("change", loadFile);
  $("event-filter").addEventListener("input", redrawEvents);
  $("show-heartbeats").addEventListener("change", redrawEvents);
  setInterval(tickHeartbeats, 1000);
  connect();
});
