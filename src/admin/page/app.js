// stickyd's live status page: reads /status every POLL_MS and updates the page in place
// (elements are kept per service and backend, so a button is never swapped under a click).
// No framework and no build step: this file ships inside the binary.
"use strict";

const POLL_MS = 2000;
// Samples of live sessions kept per backend for the drain trend.
const TREND_WINDOW_MS = 5 * 60 * 1000;
const STATES = ["ready", "drain", "maint"];
const TOKEN_KEY = "stickyd-admin-token";

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let polls = 0;
// Per backend key ("service/backend"): the previous read, for requests per second, and the
// session samples for the drain trend.
const previous = new Map();
const trends = new Map();
const services = new Map();

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child);
  }
  return node;
}

function field(name, extra) {
  return el("span", Object.assign({ "data-field": name }, extra || {}));
}

function set(root, name, text, title) {
  const node = root.querySelector(`[data-field="${name}"]`);
  if (node.textContent !== String(text)) {
    node.textContent = text;
  }
  if (title !== undefined) {
    node.title = title;
  }
  return node;
}

function total(responses) {
  return Object.values(responses).reduce((sum, count) => sum + count, 0);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) {
    return "since start";
  }
  const s = Math.floor(seconds);
  if (s < 60) return `for ${s}s`;
  if (s < 3600) return `for ${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `for ${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `for ${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function rate(key, count, now) {
  const last = previous.get(key);
  previous.set(key, { count, now });
  if (!last || now <= last.now || count < last.count) {
    return "–";
  }
  return ((count - last.count) * 1000 / (now - last.now)).toFixed(1);
}

// The drain trend: live sessions over the last TREND_WINDOW_MS, and the time to zero at
// the current rate.
function trend(key, backend, now) {
  let samples = trends.get(key);
  if (!samples || backend.state === "ready") {
    samples = [];
    trends.set(key, samples);
  }
  if (backend.state === "ready") {
    return { text: "", safe: false };
  }
  samples.push({ now, sessions: backend.sessions });
  while (samples.length > 1 && now - samples[0].now > TREND_WINDOW_MS) {
    samples.shift();
  }
  if (backend.sessions === 0 && backend.in_flight === 0) {
    return { text: "safe to remove", safe: true };
  }
  const first = samples[0];
  const minutes = (now - first.now) / 60000;
  if (minutes < 0.1) {
    return { text: `${backend.sessions} live, measuring…`, safe: false };
  }
  const perMinute = (first.sessions - backend.sessions) / minutes;
  if (perMinute <= 0) {
    return { text: `${backend.sessions} live, not falling`, safe: false };
  }
  const eta = Math.ceil(backend.sessions / perMinute);
  return {
    text: `↓ ${perMinute.toFixed(1)}/min, ~${eta} min to zero`,
    safe: false,
  };
}

function serviceSection(service) {
  let section = services.get(service.name);
  if (section) {
    return section;
  }
  const body = el("tbody");
  section = el(
    "section",
    { "data-service": service.name },
    el("h2", {}, service.name, " ", field("strategy", { class: "strategy" })),
    el(
      "dl",
      { class: "totals" },
      el("dt", {}, "req/s"), el("dd", {}, field("rate")),
      el("dt", {}, "requests"), el("dd", {}, field("requests")),
      el("dt", {}, "5xx"), el("dd", {}, field("5xx")),
      el("dt", {}, "connections"), el("dd", {}, field("open_connections")),
      el("dt", {}, "tunnels"), el("dd", {}, field("open_tunnels")),
      el("dt", {}, "stick table"), el("dd", {}, field("stick_table_entries")),
    ),
    el(
      "dl",
      { class: "totals affinity", title: "affinity outcomes: how each request's session was routed" },
      el("dt", {}, "hit"), el("dd", {}, field("affinity-hit")),
      el("dt", {}, "new"), el("dd", {}, field("affinity-new")),
      el("dt", {}, "redispatch"), el("dd", {}, field("affinity-redispatch")),
      el("dt", {}, "invalid"), el("dd", {}, field("affinity-invalid")),
      el("dt", {}, "rebalance"), el("dd", {}, field("affinity-rebalance")),
    ),
    el(
      "table",
      {},
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ...["backend", "address", "state", "health", "sessions", "drain", "req/s",
            "in flight", "requests", "5xx", ""].map((name) => el("th", {}, name)),
        ),
      ),
      body,
    ),
  );
  section.rows = new Map();
  section.body = body;
  services.set(service.name, section);
  return section;
}

function backendRow(section, service, backend) {
  let row = section.rows.get(backend.name);
  if (row) {
    return row;
  }
  const buttons = el("td", { class: "actions" });
  for (const state of STATES) {
    const button = el("button", { type: "button", "data-state": state }, state);
    button.addEventListener("click", () => setState(service.name, backend.name, state));
    buttons.append(button);
  }
  row = el(
    "tr",
    { "data-backend": backend.name },
    el("td", {}, field("name"), " ", field("id", { class: "id" })),
    el("td", {}, field("address")),
    el("td", {}, field("state", { class: "badge" })),
    el("td", {}, field("health", { class: "badge" }), " ", field("health-since", { class: "since" })),
    el("td", { class: "number" }, field("sessions")),
    el("td", {}, field("drain")),
    el("td", { class: "number" }, field("rate")),
    el("td", { class: "number" }, field("in_flight")),
    el("td", { class: "number" }, field("requests")),
    el("td", { class: "number" }, field("5xx")),
    buttons,
  );
  section.rows.set(backend.name, row);
  section.body.append(row);
  return row;
}

function renderService(service, now) {
  const section = serviceSection(service);
  const requests = total(service.responses);
  set(section, "strategy", service.strategy);
  set(section, "rate", rate("service " + service.name, requests, now));
  set(section, "requests", requests);
  set(section, "5xx", service.responses["5xx"]);
  set(section, "open_connections", service.open_connections);
  set(section, "open_tunnels", service.open_tunnels);
  set(section, "stick_table_entries", service.stick_table_entries ?? "–");
  for (const [outcome, count] of Object.entries(service.affinity)) {
    set(section, "affinity-" + outcome, count);
  }
  const seen = new Set();
  for (const backend of service.backends) {
    seen.add(backend.name);
    const key = service.name + "/" + backend.name;
    const row = backendRow(section, service, backend);
    const backendRequests = total(backend.responses);
    set(row, "name", backend.name);
    set(row, "id", backend.id === backend.name ? "" : `(${backend.id})`);
    set(row, "address", backend.address + (backend.backup ? " backup" : "") +
      (backend.weight !== 1 ? ` ×${backend.weight}` : ""));
    set(row, "state", backend.state).dataset.value = backend.state;
    set(row, "health", backend.health).dataset.value = backend.health;
    set(row, "health-since", duration(backend.health_changed_seconds_ago),
      backend.accepts_new_sessions ? "takes new sessions" : "takes no new session");
    set(row, "sessions", backend.sessions);
    const drain = trend(key, backend, now);
    set(row, "drain", drain.text).dataset.safe = String(drain.safe);
    set(row, "rate", rate(key, backendRequests, now));
    set(row, "in_flight", backend.in_flight);
    set(row, "requests", backendRequests);
    set(row, "5xx", backend.responses["5xx"]);
    for (const button of row.querySelectorAll("button[data-state]")) {
      button.disabled = button.dataset.state === backend.state;
    }
  }
  for (const [name, row] of section.rows) {
    if (!seen.has(name)) {
      row.remove();
      section.rows.delete(name);
    }
  }
  return section;
}

function render(status) {
  const now = Date.now();
  const main = document.getElementById("services");
  const seen = new Set();
  for (const service of status.services) {
    seen.add(service.name);
    const section = renderService(service, now);
    if (section.parentNode !== main) {
      main.append(section);
    }
  }
  for (const [name, section] of services) {
    if (!seen.has(name)) {
      section.remove();
      services.delete(name);
    }
  }
  const reloads = status.reloads;
  document.getElementById("summary").textContent =
    `${status.services.length} service(s) · reloads ${reloads.ok} ok, ${reloads.failed} failed · ` +
    `updated ${new Date(now).toLocaleTimeString()}`;
}

function problem(text) {
  const node = document.getElementById("problem");
  node.textContent = text || "";
  node.hidden = !text;
}

async function poll() {
  try {
    const response = await fetch("/status", { headers: headers(), cache: "no-store" });
    if (response.status === 401) {
      problem("This admin listener has a token: enter it above to see the status and use the buttons.");
      document.getElementById("token").focus();
    } else if (!response.ok) {
      problem(`/status answered ${response.status}`);
    } else {
      render(await response.json());
      problem("");
    }
  } catch (error) {
    problem(`cannot reach stickyd: ${error.message}`);
  }
  polls += 1;
  document.body.dataset.polls = String(polls);
}

async function setState(service, backend, state) {
  const path = `/services/${encodeURIComponent(service)}/backends/${encodeURIComponent(backend)}/state`;
  try {
    const response = await fetch(path, { method: "PUT", headers: headers(), body: state });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      problem(`${state} ${service}/${backend}: ${response.status} ${body.error || ""}`);
      return;
    }
  } catch (error) {
    problem(`${state} ${service}/${backend}: ${error.message}`);
    return;
  }
  await poll();
}

async function loop() {
  await poll();
  setTimeout(loop, POLL_MS);
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
  }
  poll();
});

loop();
