// Taskreaper dashboard: reads the public API, mutates with the operator's bearer token.
// Every piece of server data reaches the page through textContent or attributes, never as markup.
"use strict";

(() => {
  const API = "/api/v1";
  const TOKEN_KEY = "taskreaper.token";
  const THEME_KEY = "taskreaper.theme";
  const STATES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled", "lost"];
  const ACTIVE = new Set(["queued", "running", "cancelling"]);
  const RESUMABLE = new Set(["cancelled", "lost", "failed"]);
  // Display order of the groups: what needs attention first.
  const ORDER = ["running", "cancelling", "queued", "failed", "lost", "cancelled", "succeeded"];
  const EVENT_TYPES = ["task.submitted", "task.cancel_requested", "tasks.cancel_all",
    "task.resumed", "task.changed", "task.progress", "message"];
  const POLL_ACTIVE_MS = 2000;
  const POLL_IDLE_MS = 6000;
  const SYSTEM_MS = 5000;
  const HISTORY_LIMIT = 100;
  const ACTIVE_LIMIT = 200;
  const BEAT_LATE_S = 10;
  const BEAT_DEAD_S = 30;

  const $ = (id) => document.getElementById(id);

  const state = {
    tasks: new Map(),
    filter: { status: "", actor: "" },
    actors: [],
    system: null,
    expanded: new Set(),
    rows: new Map(),
    groups: new Map(),
    generation: 0,
    loading: null,
    again: false,
    timer: null,
    eventTimer: null,
  };

  // --- small DOM helpers ----------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setClass(node, name) {
    if (node.className !== name) node.className = name;
  }

  // --- formatting -----------------------------------------------------------------------

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }

  function secondsSince(iso) {
    if (!iso) return null;
    const at = Date.parse(iso);
    return isNaN(at) ? null : Math.max(0, (Date.now() - at) / 1000);
  }

  function ago(iso) {
    const s = secondsSince(iso);
    return s === null ? "" : `${duration(s)} ago`;
  }

  function clock(iso) {
    const at = new Date(iso);
    return isNaN(at) ? "" : at.toLocaleString();
  }

  function clip(text, limit) {
    // A document passed as an argument can be megabytes; the page shows its start.
    const value = String(text);
    return value.length <= limit ? value : `${value.slice(0, limit)}… (${value.length - limit} more characters)`;
  }

  function shortId(id) {
    return String(id).slice(0, 8);
  }

  // --- API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      const t = token();
      if (!t) {
        askForToken("Enter the API token first.");
        throw new ApiError(0, "no_token", "no API token set");
      }
      headers.Authorization = `Bearer ${t}`;
    }
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, "network", `cannot reach the API (${err.message})`);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        renderToken();
      }
      throw new ApiError(response.status, error.code || "http_error",
        error.message || `${response.status} ${response.statusText}`);
    }
    return { status: response.status, data };
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== "" && value !== undefined && value !== null) q.set(key, value);
    }
    return q.toString();
  }

  async function listTasks(params) {
    const { data } = await call("GET", `${API}/tasks?${query(params)}`);
    return data.items;
  }

  // --- loading --------------------------------------------------------------------------

  async function fetchTasks() {
    const { status, actor } = state.filter;
    if (status) return listTasks({ status, actor, limit: ACTIVE_LIMIT });
    // Active tasks are fetched by state so a long history never pushes them off the page.
    const lists = await Promise.all([
      ...["running", "cancelling", "queued"].map((s) => listTasks({ status: s, actor, limit: ACTIVE_LIMIT })),
      listTasks({ actor, limit: HISTORY_LIMIT }),
    ]);
    return lists.flat();
  }

  async function refreshTasks() {
    // One load at a time; a request arriving meanwhile runs once more afterwards.
    if (state.loading) {
      state.again = true;
      return state.loading;
    }
    const generation = state.generation;
    state.loading = (async () => {
      try {
        const items = await fetchTasks();
        if (generation !== state.generation) return;
        state.tasks = new Map(items.map((t) => [t.id, t]));
        renderTasks();
        setText($("updated"), `Updated ${new Date().toLocaleTimeString()}`);
      } catch (err) {
        if (err.code !== "no_token") setText($("updated"), `Refresh failed: ${err.message}`);
      }
    })();
    try {
      await state.loading;
    } finally {
      state.loading = null;
    }
    if (state.again) {
      state.again = false;
      await refreshTasks();
    }
    return undefined;
  }

  async function refreshSystem() {
    try {
      const { data } = await call("GET", `${API}/system/status`);
      state.system = data;
      renderCounts();
      renderSystem();
    } catch (err) {
      renderSystemError(err);
    }
  }

  async function refreshActors() {
    try {
      const { data } = await call("GET", `${API}/actors`);
      state.actors = data.items;
      renderActors();
    } catch (_) {
      // The catalogue fills in on the next refresh.
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    if (document.hidden) return;
    const busy = [...state.tasks.values()].some((t) => ACTIVE.has(t.status));
    state.timer = setTimeout(async () => {
      await Promise.all([refreshTasks(), maybeRefreshSystem()]);
      schedule();
    }, busy ? POLL_ACTIVE_MS : POLL_IDLE_MS);
  }

  let systemAt = 0;
  async function maybeRefreshSystem(force) {
    if (!force && Date.now() - systemAt < SYSTEM_MS) return;
    systemAt = Date.now();
    await refreshSystem();
  }

  function refreshSoon() {
    // Events come in bursts (a cancel-all touches many tasks): one refresh per burst.
    if (state.eventTimer) return;
    state.eventTimer = setTimeout(async () => {
      state.eventTimer = null;
      await Promise.all([refreshTasks(), maybeRefreshSystem(true)]);
    }, 200);
  }

  // --- live events ----------------------------------------------------------------------

  function connectEvents() {
    const live = $("live");
    const source = new EventSource(`${API}/events`);
    source.addEventListener("open", () => {
      live.dataset.state = "open";
      setText($("live-text"), "Live");
      refreshSoon();
    });
    source.addEventListener("error", () => {
      live.dataset.state = "error";
      setText($("live-text"), "Reconnecting");
    });
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => onEvent(type, event.data));
    }
  }

  function onEvent(type, raw) {
    let event;
    try {
      event = JSON.parse(raw);
    } catch (_) {
      return;
    }
    const task = event && typeof event.task_id === "string" ? state.tasks.get(event.task_id) : null;
    if (type === "task.progress") {
      // Progress needs no round trip: patch the row, unless it is from an older attempt.
      // A task not on the page comes in with the next poll or state change.
      if (!task || (typeof event.attempt === "number" && event.attempt < task.attempt)) return;
      const p = task.progress;
      for (const key of ["done", "failed", "total", "current_chunk", "eta_seconds"]) {
        if (key in event) p[key] = event[key];
      }
      p.percent = p.total ? Math.round((1000 * (p.done + p.failed)) / p.total) / 10 : null;
      if (typeof event.at === "number") task.heartbeat_at = new Date(event.at * 1000).toISOString();
      updateRow(task);
      return;
    }
    if (task && typeof event.status === "string" && STATES.includes(event.status)) {
      task.status = event.status;
      updateRow(task);
    }
    refreshSoon();
  }

  // --- rendering: counts and filters ----------------------------------------------------

  function renderCounts() {
    const box = $("counts");
    const counts = (state.system && state.system.counts) || {};
    const total = STATES.reduce((sum, s) => sum + (counts[s] || 0), 0);
    const tiles = [["", "all", total], ...STATES.map((s) => [s, s, counts[s] || 0])];
    if (box.childElementCount !== tiles.length) {
      box.replaceChildren(...tiles.map(([value, name]) => el("button", {
        type: "button", class: `count s-${name}`, dataset: { status: value },
        onclick: () => setFilter({ status: state.filter.status === value ? "" : value }),
      }, el("span", { class: "count-n" }), el("span", { class: "count-label", text: name }))));
    }
    tiles.forEach(([value, , n], i) => {
      const tile = box.children[i];
      setText(tile.querySelector(".count-n"), n);
      tile.setAttribute("aria-pressed", String(state.filter.status === value));
    });
  }

  function renderActors() {
    const names = [...new Set([...state.actors.map((a) => a.name), state.filter.actor])]
      .filter(Boolean).sort();
    fillSelect($("filter-actor"), [["", "All actors"], ...names.map((n) => [n, n])], state.filter.actor);
    const submit = $("submit-actor");
    const chosen = submit.value || (names.includes("distill") ? "distill" : names[0] || "");
    fillSelect(submit, names.map((n) => [n, n]), chosen);
    renderParams();
  }

  function fillSelect(select, options, value) {
    const same = select.options.length === options.length &&
      options.every(([v], i) => select.options[i].value === v);
    if (!same) {
      select.replaceChildren(...options.map(([v, label]) => el("option", { value: v, text: label })));
    }
    select.value = value;
  }

  function renderParams() {
    const actor = state.actors.find((a) => a.name === $("submit-actor").value);
    const chips = Object.entries((actor && actor.params) || {}).map(([name, spec]) => {
      const kinds = (spec.types || []).join(" | ") || "any";
      const text = spec.required ? `${name}: ${kinds}` : `${name} = ${JSON.stringify(spec.default)}`;
      return el("span", { class: spec.required ? "param required" : "param", title: kinds, text });
    });
    $("submit-params").replaceChildren(...chips);
  }

  function setFilter(change) {
    Object.assign(state.filter, change);
    $("filter-status").value = state.filter.status;
    $("filter-actor").value = state.filter.actor;
    state.generation += 1;
    renderCounts();
    renderTasks();
    refreshTasks().then(schedule);
  }

  // --- rendering: the task table --------------------------------------------------------

  function visibleTasks() {
    const { status, actor } = state.filter;
    return [...state.tasks.values()].filter((t) =>
      (!status || t.status === status) && (!actor || t.actor === actor));
  }

  function renderTasks() {
    const tasks = visibleTasks();
    const byState = new Map(ORDER.map((s) => [s, []]));
    for (const t of tasks) (byState.get(t.status) || byState.get("lost")).push(t);
    const nodes = [];
    for (const [status, list] of byState) {
      if (!list.length) continue;
      list.sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
      nodes.push(groupRow(status, list.length));
      for (const task of list) {
        const row = taskRow(task);
        nodes.push(row.main);
        if (state.expanded.has(task.id)) {
          fillDetail(row, task);
          nodes.push(row.detail);
        }
      }
    }
    for (const id of state.rows.keys()) {
      if (!state.tasks.has(id)) state.rows.delete(id);
    }
    place($("task-rows"), nodes);
    $("empty").hidden = tasks.length > 0;
    const active = tasks.filter((t) => ACTIVE.has(t.status)).length;
    setText($("shown"), `${tasks.length} shown, ${active} active`);
    renderBulk();
  }

  // Moves only the rows whose position changed, so progress bars keep animating.
  function place(parent, nodes) {
    let cursor = parent.firstChild;
    for (const node of nodes) {
      if (node === cursor) {
        cursor = cursor.nextSibling;
      } else {
        parent.insertBefore(node, cursor);
      }
    }
    while (cursor) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
  }

  function groupRow(status, n) {
    let row = state.groups.get(status);
    if (!row) {
      row = el("tr", { class: `group s-${status}`, dataset: { group: status } },
        el("td", { colspan: 8 }, el("span", { class: "group-dot" }), status,
          el("span", { class: "group-n" })));
      state.groups.set(status, row);
    }
    setText(row.querySelector(".group-n"), `· ${n}`);
    return row;
  }

  function taskRow(task) {
    let row = state.rows.get(task.id);
    if (!row) {
      row = buildRow(task);
      state.rows.set(task.id, row);
    }
    row.task = task;
    updateCells(row, task);
    return row;
  }

  function buildRow(task) {
    const cells = {
      badge: el("span", { class: "badge" }),
      actor: el("span", { class: "task-actor" }),
      id: el("span", { class: "task-id mono", title: task.id, text: shortId(task.id) }),
      sub: el("div", { class: "task-sub" }),
      done: el("div", { class: "progress-done" }),
      failedBar: el("div", { class: "progress-failed" }),
      count: el("span"),
      failed: el("span", { class: "failed" }),
      beat: el("span"),
      eta: el("span"),
      attempt: el("span"),
      worker: el("span", { class: "worker mono" }),
      cancel: el("button", { type: "button", class: "btn btn-sm btn-danger", dataset: { action: "cancel" }, text: "Cancel" }),
      resume: el("button", { type: "button", class: "btn btn-sm", dataset: { action: "resume" }, text: "Resume" }),
      more: el("button", { type: "button", class: "btn btn-sm btn-ghost btn-icon", dataset: { action: "details" }, "aria-expanded": "false", "aria-label": "Details", title: "Details", text: "▸" }),
    };
    cells.bar = el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 },
      cells.done, cells.failedBar);
    const main = el("tr", { class: "task-row", dataset: { id: task.id } },
      el("td", { class: "c-status" }, cells.badge),
      el("td", { class: "c-task" }, el("div", {}, cells.actor, cells.id), cells.sub),
      el("td", { class: "c-progress" }, cells.bar, el("div", { class: "progress-label" }, cells.count, cells.failed)),
      el("td", { class: "c-beat" }, cells.beat),
      el("td", { class: "c-eta" }, cells.eta),
      el("td", { class: "c-attempt" }, cells.attempt),
      el("td", { class: "c-worker" }, cells.worker),
      el("td", { class: "c-actions" }, cells.cancel, cells.resume, cells.more));
    const row = { main, cells, task, detail: el("tr", { class: "detail" }, el("td", { colspan: 8 })) };
    cells.cancel.addEventListener("click", () => confirmCancelOne(row.task));
    cells.resume.addEventListener("click", () => resume(row.task, cells.resume));
    cells.more.addEventListener("click", () => toggleDetail(row.task.id));
    return row;
  }

  function updateRow(task) {
    const row = state.rows.get(task.id);
    if (!row) return;
    row.task = task;
    updateCells(row, task);
    if (!visibleTasks().includes(task)) renderTasks();
    else renderBulk();
  }

  function updateCells(row, task) {
    const c = row.cells;
    const p = task.progress || {};
    const status = task.status;
    row.main.dataset.status = status;
    setClass(row.main, `task-row s-${status}`);
    setClass(c.badge, `badge s-${status}`);
    setText(c.badge, status);
    setText(c.actor, task.actor);
    setText(c.sub, subline(task));

    const total = p.total || 0;
    const known = total > 0;
    // A task can end before its first heartbeat recorded a total: full, if it succeeded.
    const donePct = known ? Math.min(100, (100 * p.done) / total) : status === "succeeded" ? 100 : 0;
    const failedPct = known ? Math.min(100 - donePct, (100 * p.failed) / total) : 0;
    const percent = known ? Math.round(donePct + failedPct) : null;
    c.done.style.width = `${donePct}%`;
    c.failedBar.style.width = `${failedPct}%`;
    c.bar.classList.toggle("unknown", !known && status === "running");
    c.bar.dataset.percent = percent === null ? "" : String(percent);
    c.bar.dataset.done = String(p.done || 0);
    if (percent === null) c.bar.removeAttribute("aria-valuenow");
    else c.bar.setAttribute("aria-valuenow", String(percent));
    setText(c.count, known ? `${p.done + p.failed} / ${total} · ${percent}%` : progressHint(task));
    setText(c.failed, p.failed ? `${p.failed} failed` : "");

    const beat = status === "running" || status === "cancelling" ? secondsSince(task.heartbeat_at) : null;
    setText(c.beat, beat === null ? "—" : `${duration(beat)} ago`);
    setClass(c.beat, beat === null ? "muted" : beat >= BEAT_DEAD_S ? "age-dead" : beat >= BEAT_LATE_S ? "age-late" : "age-ok");
    c.beat.title = task.heartbeat_at ? `Last heartbeat ${clock(task.heartbeat_at)}` : "No heartbeat yet";
    setText(c.eta, etaText(task, beat));

    setText(c.attempt, task.attempt ? `#${task.attempt}` : "—");
    c.attempt.title = task.resumes ? `Resumed ${task.resumes} time(s)` : "";
    setText(c.worker, task.worker || "—");
    c.worker.title = task.worker || "";
    setClass(c.worker, task.worker ? "worker mono" : "worker muted");

    c.cancel.hidden = !ACTIVE.has(status);
    setText(c.cancel, status === "cancelling" ? "Force" : "Cancel");
    c.cancel.title = status === "cancelling" ? "Kill now instead of waiting for the grace period" : "Cancel this task";
    c.resume.hidden = !RESUMABLE.has(status);
    const open = state.expanded.has(task.id);
    c.more.setAttribute("aria-expanded", String(open));
    setText(c.more, open ? "▾" : "▸");
    if (open) fillDetail(row, task);
  }

  function subline(task) {
    const parts = [task.queue];
    if (ACTIVE.has(task.status)) {
      parts.push(task.started_at && task.status !== "queued" ? `started ${ago(task.started_at)}` : `submitted ${ago(task.created_at)}`);
    } else if (task.finished_at) {
      parts.push(`ended ${ago(task.finished_at)}`);
    }
    if (task.outcome && task.outcome !== "never_started" && !ACTIVE.has(task.status)) {
      parts.push(task.outcome.replace(/_/g, " "));
    }
    return parts.filter(Boolean).join(" · ");
  }

  function progressHint(task) {
    const p = task.progress || {};
    if (task.status === "queued") {
      if (task.eta && Date.parse(task.eta) > Date.now()) {
        return `starts in ${duration((Date.parse(task.eta) - Date.now()) / 1000)}`;
      }
      return "waiting for a worker";
    }
    if (p.done || p.failed) return `${p.done + p.failed} chunks`;
    if (task.status === "running") return "starting";
    if (task.outcome === "never_started") return "never started";
    return "—";
  }

  function etaText(task, beat) {
    const eta = task.progress && task.progress.eta_seconds;
    if (task.status !== "running" || eta === null || eta === undefined) return "—";
    // The estimate was made at the last heartbeat; count down from there.
    return duration(Math.max(0, eta - (beat || 0))) || "—";
  }

  function toggleDetail(id) {
    if (state.expanded.has(id)) state.expanded.delete(id);
    else state.expanded.add(id);
    renderTasks();
  }

  function fillDetail(row, task) {
    const entries = [
      ["Id", task.id],
      ["Queue", task.queue],
      ["Arguments", clip(JSON.stringify(task.kwargs), 2000)],
      ["Created", clock(task.created_at)],
      ["Started", task.started_at ? clock(task.started_at) : "—"],
      ["Finished", task.finished_at ? clock(task.finished_at) : "—"],
      ["Current chunk", task.progress && task.progress.current_chunk != null ? task.progress.current_chunk : "—"],
      ["Outcome", task.outcome || "—"],
      ["Resumes", task.resumes || 0],
    ];
    if (task.error) entries.push(["Error", clip(task.error, 2000)]);
    if (task.cancel) {
      const c = task.cancel;
      entries.push(["Cancel", `${clock(c.requested_at)} by ${c.by || "?"}${c.forced ? ", forced" : ""}` +
        `${c.reason ? ` — ${c.reason}` : ""}`]);
    }
    const key = JSON.stringify(entries);
    if (row.detailKey === key) return;
    row.detailKey = key;
    const grid = el("dl", { class: "detail-grid" });
    for (const [label, value] of entries) {
      grid.append(el("dt", { text: label }), el("dd", {}, label === "Arguments" ? el("pre", { text: value }) : String(value)));
    }
    row.detail.firstChild.replaceChildren(grid);
  }

  function tick() {
    for (const row of state.rows.values()) updateCells(row, row.task);
  }

  // --- rendering: system panel ----------------------------------------------------------

  function section(title, ...children) {
    return el("div", {}, el("div", { class: "sys-head", text: title }), ...children);
  }

  function list(items) {
    return el("ul", { class: "sys-list" }, ...items);
  }

  function item(label, value, cls, title) {
    return el("li", {}, el("span", { class: "mono", title: title || label, text: label }),
      el("span", { class: `sys-value ${cls || ""}`, text: value }));
  }

  function renderSystem() {
    const s = state.system;
    const reaper = s.reaper || {};
    const status = reaper.status || {};
    const reaperItems = [item("leader", reaper.leader || "none", reaper.leader ? "ok" : "bad", reaper.leader || "no reaper holds the lock")];
    const findings = [];
    for (const [key, value] of Object.entries(status)) {
      if (key === "leader") continue;
      if (key.startsWith("found:")) {
        // Counters of what the last passes repaired: only the non-zero ones are news.
        if (value) findings.push(item(key.slice(6).replace(/_/g, " "), String(value), "warn", key));
        continue;
      }
      const looksLikeTime = typeof value === "number" && value > 1e9 && value < 1e11;
      const shown = looksLikeTime ? `${duration(Date.now() / 1000 - value)} ago`
        : key.endsWith("_ms") && typeof value === "number" ? `${Math.round(value * 10) / 10} ms`
          : typeof value === "object" ? JSON.stringify(value) : String(value);
      reaperItems.push(item(key.replace(/_at$/, "").replace(/_ms$/, " took").replace(/_/g, " "), shown, "", String(value)));
    }
    if (Object.keys(status).some((k) => k.startsWith("found:"))) {
      reaperItems.push(...(findings.length ? findings : [item("repairs", "none needed", "ok")]));
    }

    const workers = s.workers || [];
    const workerItems = workers.length
      ? workers.map((w) => item(w.node, `${w.executions || 0} running`, "", [w.host, w.pid && `pid ${w.pid}`].filter(Boolean).join(" · ") || w.node))
      : [el("li", { class: "warn", text: "No workers announced" })];

    const queueItems = Object.entries(s.queues || {}).map(([name, q]) =>
      item(name, `${q.ready} ready`, q.ready > 0 ? "" : "muted"));
    queueItems.push(item("unacked", String(s.unacked || 0), "", "Delivered to a worker and not yet acknowledged: running, prefetched or scheduled"));
    if (s.expired_executions) {
      queueItems.push(item("expired executions", String(s.expired_executions), "warn", "Registrations whose heartbeat lapsed"));
    }

    const inc = s.inconsistencies || {};
    const kinds = Object.entries(inc);
    const bad = kinds.filter(([, ids]) => ids && ids.length);
    const incItems = bad.length
      ? bad.map(([kind, ids]) => el("li", { class: "inc" },
        el("div", { class: "warn", text: `${kind.replace(/_/g, " ")} · ${ids.length}` }),
        el("div", { class: "mono small muted", text: ids.slice(0, 5).map(shortId).join(" ") + (ids.length > 5 ? " …" : "") })))
      : [el("li", { class: "ok", text: "None: the database agrees with the workers" })];

    $("system").replaceChildren(
      section("Reaper", list(reaperItems)),
      section(`Workers · ${workers.length}`, list(workerItems)),
      section("Queues", list(queueItems)),
      section("Inconsistencies", el("ul", { class: "sys-list" }, ...incItems)),
    );
  }

  function renderSystemError(err) {
    $("system").replaceChildren(el("p", { class: "bad small", text: `Status unavailable: ${err.message}` }));
  }

  // --- actions --------------------------------------------------------------------------

  function toast(message, kind) {
    const node = el("div", { class: `toast ${kind || ""}`, role: "status", text: message });
    $("toasts").append(node);
    setTimeout(() => node.remove(), kind === "bad" ? 9000 : 5000);
  }

  let confirmAction = null;

  function askConfirm({ title, text, ok, force, action }) {
    const dialog = $("confirm-dialog");
    setText($("confirm-title"), title);
    setText($("confirm-text"), text);
    setText($("confirm-ok"), ok);
    $("confirm-reason").value = "";
    $("confirm-force").checked = Boolean(force);
    confirmAction = action;
    dialog.showModal();
    $("confirm-reason").focus();
  }

  async function onConfirm(event) {
    event.preventDefault();
    const action = confirmAction;
    confirmAction = null;
    const body = { force: $("confirm-force").checked };
    const reason = $("confirm-reason").value.trim();
    if (reason) body.reason = reason;
    $("confirm-dialog").close();
    if (action) await action(body);
  }

  function label(task) {
    return `${task.actor} ${shortId(task.id)}`;
  }

  function confirmCancelOne(task) {
    const cancelling = task.status === "cancelling";
    askConfirm({
      title: cancelling ? `Force-stop ${label(task)}?` : `Cancel ${label(task)}?`,
      text: task.status === "queued"
        ? "It has not started, so it will never run."
        : "The task stops at its next check; one that does not stop within the grace period is killed. Saved chunks are kept and it can be resumed later.",
      ok: cancelling ? "Force stop" : "Cancel task",
      force: cancelling,
      action: (body) => cancelOne(task, body),
    });
  }

  async function cancelOne(task, body) {
    try {
      const { status, data } = await call("POST", `${API}/tasks/${encodeURIComponent(task.id)}/cancel`, body);
      state.tasks.set(data.id, data);
      taskRow(data);
      renderTasks();
      toast(status === 202 ? `${label(data)} is ${data.status}` : `${label(data)} was already ${data.status}`, "ok");
    } catch (err) {
      if (err.code !== "no_token") toast(`Cancel failed: ${err.message}`, "bad");
    }
    refreshSoon();
  }

  function bulkPlan() {
    const { status, actor } = state.filter;
    if (!status && !actor) return null;
    const targets = visibleTasks().filter((t) => t.status === "queued" || t.status === "running");
    // Filtering by actor alone matches what cancel-all can do in one server-side step.
    return { serverSide: !status && Boolean(actor), targets, actor };
  }

  function renderBulk() {
    const button = $("cancel-filtered");
    const plan = bulkPlan();
    if (!plan) {
      button.disabled = true;
      setText(button, "Cancel filtered");
      button.title = "Choose a state or an actor first";
      return;
    }
    button.disabled = !plan.serverSide && plan.targets.length === 0;
    setText(button, plan.serverSide ? `Cancel all ${plan.actor}` : `Cancel filtered (${plan.targets.length})`);
    button.title = plan.serverSide ? `Cancel every queued and running ${plan.actor} task` : "Cancel the queued and running tasks shown";
  }

  function confirmCancelFiltered() {
    const plan = bulkPlan();
    if (!plan) return;
    if (plan.serverSide) {
      askConfirm({
        title: `Cancel every ${plan.actor} task?`,
        text: `Every queued and running ${plan.actor} task is cancelled, including any not shown on this page.`,
        ok: `Cancel ${plan.actor} tasks`,
        action: (body) => cancelAll({ ...body, actor: plan.actor }),
      });
      return;
    }
    const n = plan.targets.length;
    askConfirm({
      title: `Cancel ${n} task${n === 1 ? "" : "s"}?`,
      text: "Each queued or running task shown with these filters is cancelled.",
      ok: `Cancel ${n} task${n === 1 ? "" : "s"}`,
      action: (body) => cancelMany(plan.targets, body),
    });
  }

  async function cancelMany(targets, body) {
    const outcome = { changed: 0, unchanged: 0, failed: 0 };
    const queue = [...targets];
    let firstError = null;
    const worker = async () => {
      while (queue.length) {
        const task = queue.shift();
        try {
          const { status } = await call("POST", `${API}/tasks/${encodeURIComponent(task.id)}/cancel`, body);
          outcome[status === 202 ? "changed" : "unchanged"] += 1;
        } catch (err) {
          outcome.failed += 1;
          firstError = firstError || err;
          if (err.status === 401 || err.status === 403 || err.code === "no_token") queue.length = 0;
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    const text = `Cancelled ${outcome.changed}, already stopping ${outcome.unchanged}` +
      (outcome.failed ? `, failed ${outcome.failed} (${firstError.message})` : "");
    toast(text, outcome.failed ? "warn" : "ok");
    refreshSoon();
  }

  function confirmCancelAll() {
    const active = ["queued", "running", "cancelling"].reduce(
      (sum, s) => sum + ((state.system && state.system.counts && state.system.counts[s]) || 0), 0);
    askConfirm({
      title: "Cancel every task?",
      text: `All queued and running tasks of every actor are cancelled (${active} active now). Saved chunks are kept; cancelled tasks can be resumed.`,
      ok: "Cancel all tasks",
      action: (body) => cancelAll(body),
    });
  }

  async function cancelAll(body) {
    try {
      const { data } = await call("POST", `${API}/tasks/cancel-all`, body);
      toast(`Cancelled ${data.cancelled} queued, stopping ${data.cancelling} running` +
        `${data.orphans ? `, ${data.orphans} orphans` : ""} (${data.took_ms} ms)`, "ok");
    } catch (err) {
      if (err.code !== "no_token") toast(`Cancel all failed: ${err.message}`, "bad");
    }
    refreshSoon();
  }

  async function resume(task, button) {
    button.disabled = true;
    try {
      const { data } = await call("POST", `${API}/tasks/${encodeURIComponent(task.id)}/resume`, {});
      state.tasks.set(data.id, data);
      taskRow(data);
      renderTasks();
      toast(`${label(data)} resumed from its checkpoint`, "ok");
    } catch (err) {
      if (err.code !== "no_token") toast(`Resume failed: ${err.message}`, "bad");
    } finally {
      button.disabled = false;
    }
    refreshSoon();
  }

  async function onSubmit(event) {
    event.preventDefault();
    const actor = $("submit-actor").value;
    let kwargs;
    try {
      kwargs = JSON.parse($("submit-kwargs").value.trim() || "{}");
    } catch (err) {
      toast(`Arguments are not valid JSON: ${err.message}`, "bad");
      return;
    }
    if (!kwargs || typeof kwargs !== "object" || Array.isArray(kwargs)) {
      toast("Arguments must be a JSON object", "bad");
      return;
    }
    const button = $("submit-button");
    button.disabled = true;
    try {
      const { data } = await call("POST", `${API}/tasks`, { actor, kwargs });
      toast(`Submitted ${label(data)}`, "ok");
    } catch (err) {
      if (err.code !== "no_token") toast(`Submit failed: ${err.message}`, "bad");
    } finally {
      button.disabled = false;
    }
    refreshSoon();
  }

  // --- token and theme ------------------------------------------------------------------

  function renderToken() {
    const has = Boolean(token());
    $("token-banner").hidden = has;
    setText($("token-open"), has ? "Token set" : "API token");
  }

  function saveToken(value) {
    const t = value.trim();
    if (!t) return false;
    sessionStorage.setItem(TOKEN_KEY, t);
    renderToken();
    toast("Token saved for this tab", "ok");
    return true;
  }

  function askForToken(message) {
    if (message) toast(message, "warn");
    const dialog = $("token-dialog");
    $("token-dialog-input").value = "";
    if (!dialog.open) dialog.showModal();
    $("token-dialog-input").focus();
  }

  function applyTheme(theme) {
    if (theme) document.documentElement.dataset.theme = theme;
    else delete document.documentElement.dataset.theme;
  }

  function toggleTheme() {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    const next = dark ? "light" : "dark";
    localStorage.setItem(THEME_KEY, next);
    applyTheme(next);
  }

  // --- start ----------------------------------------------------------------------------

  function init() {
    applyTheme(localStorage.getItem(THEME_KEY));
    for (const s of STATES) $("filter-status").append(el("option", { value: s, text: s }));
    $("filter-status").addEventListener("change", (e) => setFilter({ status: e.target.value }));
    $("filter-actor").addEventListener("change", (e) => setFilter({ actor: e.target.value }));
    $("cancel-filtered").addEventListener("click", confirmCancelFiltered);
    $("cancel-all").addEventListener("click", confirmCancelAll);
    $("confirm-form").addEventListener("submit", onConfirm);
    $("confirm-back").addEventListener("click", () => $("confirm-dialog").close());
    $("confirm-dialog").addEventListener("close", () => { confirmAction = null; });
    $("submit-form").addEventListener("submit", onSubmit);
    $("submit-actor").addEventListener("change", renderParams);
    $("token-banner").addEventListener("submit", (e) => {
      e.preventDefault();
      if (saveToken($("token-input").value)) $("token-input").value = "";
    });
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      if (saveToken($("token-dialog-input").value)) $("token-dialog").close();
    });
    $("token-open").addEventListener("click", () => askForToken());
    $("token-close").addEventListener("click", () => $("token-dialog").close());
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      renderToken();
      $("token-dialog").close();
      toast("Token forgotten", "ok");
    });
    $("theme-toggle").addEventListener("click", toggleTheme);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshSoon();
      schedule();
    });

    renderToken();
    renderCounts();
    connectEvents();
    refreshActors();
    setInterval(tick, 1000);
    setInterval(refreshActors, 60000);
    Promise.all([refreshTasks(), maybeRefreshSystem(true)]).then(schedule);
  }

  init();
})();
