// The counts, the filters, the submit form's actor list and the task table. Rows are built
// once per task and updated in place, so progress bars keep animating.

import { $, el, setClass, setText } from "./dom.js";
import { ago, clip, clock, duration, secondsSince, shortId } from "./format.js";
import {
  ACTIVE, ATTENTION, CANCELLABLE, CANCEL_PENDING, EXECUTING, HELD, INITIAL, PAUSABLE, RESUMABLE,
  STATES, complete, working,
} from "./states.js";
import { bulkPlan, store, visibleTasks } from "./store.js";

const BEAT_LATE_S = 10;
const BEAT_DEAD_S = 30;

const rows = new Map();      // task id -> { main, detail, cells, task }
const groups = new Map();    // state -> its group header row
const expanded = new Set();  // ids whose details are open

// --- counts and filters -----------------------------------------------------------------

export function renderCounts() {
  const box = $("counts");
  const counts = (store.system && store.system.counts) || {};
  const total = STATES.reduce((sum, s) => sum + (counts[s] || 0), 0);
  const tiles = [["", "all", total], ...STATES.map((s) => [s, s, counts[s] || 0])];
  if (box.childElementCount !== tiles.length) {
    box.replaceChildren(...tiles.map(([value, name]) => el("button", {
      type: "button", class: `count s-${name}`, dataset: { status: value },
    }, el("span", { class: "count-n" }), el("span", { class: "count-label", text: name }))));
  }
  tiles.forEach(([value, , n], i) => {
    const tile = box.children[i];
    setText(tile.querySelector(".count-n"), n);
    tile.setAttribute("aria-pressed", String(store.filter.status === value));
  });
}

export function renderStateFilter() {
  for (const s of STATES) $("filter-status").append(el("option", { value: s, text: s }));
}

export function showFilter() {
  $("filter-status").value = store.filter.status;
  $("filter-actor").value = store.filter.actor;
}

export function renderActors() {
  const names = [...new Set([...store.actors.map((a) => a.name), store.filter.actor])]
    .filter(Boolean).sort();
  fillSelect($("filter-actor"), [["", "All actors"], ...names.map((n) => [n, n])], store.filter.actor);
  const submit = $("submit-actor");
  const chosen = submit.value || (names.includes("distill") ? "distill" : names[0] || "");
  fillSelect(submit, names.map((n) => [n, n]), chosen);
  renderParams();
}

function fillSelect(select, options, value) {
  const same = select.options.length === options.length &&
    options.every(([v], i) => select.options[i].value === v);
  if (!same) {
    select.replaceChildren(...options.map(([v, text]) => el("option", { value: v, text })));
  }
  select.value = value;
}

export function renderParams() {
  const actor = store.actors.find((a) => a.name === $("submit-actor").value);
  const chips = Object.entries((actor && actor.params) || {}).map(([name, spec]) => {
    const kinds = (spec.types || []).join(" | ") || "any";
    const text = spec.required ? `${name}: ${kinds}` : `${name} = ${JSON.stringify(spec.default)}`;
    return el("span", { class: spec.required ? "param required" : "param", title: kinds, text });
  });
  $("submit-params").replaceChildren(...chips);
}

export function renderBulk() {
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
  button.title = plan.serverSide ? `Cancel every queued, running and paused ${plan.actor} task` : "Cancel the queued and running tasks shown";
}

// --- the task table ---------------------------------------------------------------------

export function renderTasks() {
  const tasks = visibleTasks();
  const byState = new Map(ATTENTION.map((s) => [s, []]));
  for (const t of tasks) {
    if (!byState.has(t.status)) byState.set(t.status, []);
    byState.get(t.status).push(t);
  }
  const nodes = [];
  for (const [status, list] of byState) {
    if (!list.length) continue;
    list.sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
    nodes.push(groupRow(status, list.length));
    for (const task of list) {
      const row = taskRow(task);
      nodes.push(row.main);
      if (expanded.has(task.id)) {
        fillDetail(row, task);
        nodes.push(row.detail);
      }
    }
  }
  for (const id of rows.keys()) {
    if (!store.tasks.has(id)) rows.delete(id);
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
  let row = groups.get(status);
  if (!row) {
    row = el("tr", { class: `group s-${status}`, dataset: { group: status } },
      el("td", { colspan: 8 }, el("span", { class: "group-dot" }), status,
        el("span", { class: "group-n" })));
    groups.set(status, row);
  }
  setText(row.querySelector(".group-n"), `· ${n}`);
  return row;
}

// The task a row shows right now (the row's buttons act on it).
export function rowTask(id) {
  const row = rows.get(id);
  return row ? row.task : null;
}

export function taskRow(task) {
  let row = rows.get(task.id);
  if (!row) {
    row = buildRow(task);
    rows.set(task.id, row);
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
    pause: el("button", { type: "button", class: "btn btn-sm", dataset: { action: "pause" }, text: "Pause", title: "Save its work, stop, and wait for a resume" }),
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
    el("td", { class: "c-actions" }, cells.pause, cells.cancel, cells.resume, cells.more));
  return { main, cells, task, detail: el("tr", { class: "detail" }, el("td", { colspan: 8 })) };
}

export function updateRow(task) {
  const row = rows.get(task.id);
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
  // A task can end before its first heartbeat recorded a total: full, if it completed.
  const donePct = known ? Math.min(100, (100 * p.done) / total) : complete(status) ? 100 : 0;
  const failedPct = known ? Math.min(100 - donePct, (100 * p.failed) / total) : 0;
  const percent = known ? Math.round(donePct + failedPct) : null;
  c.done.style.width = `${donePct}%`;
  c.failedBar.style.width = `${failedPct}%`;
  c.bar.classList.toggle("unknown", !known && working(status));
  c.bar.dataset.percent = percent === null ? "" : String(percent);
  c.bar.dataset.done = String(p.done || 0);
  if (percent === null) c.bar.removeAttribute("aria-valuenow");
  else c.bar.setAttribute("aria-valuenow", String(percent));
  setText(c.count, known ? `${p.done + p.failed} / ${total} · ${percent}%` : progressHint(task));
  setText(c.failed, p.failed ? `${p.failed} failed` : "");

  const beat = EXECUTING.has(status) ? secondsSince(task.heartbeat_at) : null;
  setText(c.beat, beat === null ? "—" : `${duration(beat)} ago`);
  setClass(c.beat, beat === null ? "muted" : beat >= BEAT_DEAD_S ? "age-dead" : beat >= BEAT_LATE_S ? "age-late" : "age-ok");
  c.beat.title = task.heartbeat_at ? `Last heartbeat ${clock(task.heartbeat_at)}` : "No heartbeat yet";
  setText(c.eta, etaText(task, beat));

  setText(c.attempt, task.attempt ? `#${task.attempt}` : "—");
  c.attempt.title = task.resumes ? `Resumed ${task.resumes} time(s)` : "";
  setText(c.worker, task.worker || "—");
  c.worker.title = task.worker || "";
  setClass(c.worker, task.worker ? "worker mono" : "worker muted");

  const pending = CANCEL_PENDING.has(status);
  c.cancel.hidden = !CANCELLABLE.has(status);
  setText(c.cancel, pending ? "Force" : "Cancel");
  c.cancel.title = pending ? "Kill now instead of waiting for the grace period" : "Cancel this task";
  c.pause.hidden = !PAUSABLE.has(status);
  c.resume.hidden = !RESUMABLE.has(status);
  c.resume.title = HELD.has(status) ? "Queue it again: it goes on from its checkpoint" : "Start a new attempt from its checkpoint";
  const open = expanded.has(task.id);
  c.more.setAttribute("aria-expanded", String(open));
  setText(c.more, open ? "▾" : "▸");
  if (open) fillDetail(row, task);
}

function subline(task) {
  const parts = [task.queue];
  if (ACTIVE.has(task.status)) {
    parts.push(task.started_at && task.status !== INITIAL ? `started ${ago(task.started_at)}` : `submitted ${ago(task.created_at)}`);
    if (EXECUTING.has(task.status)) parts.push(usage(task));
  } else if (HELD.has(task.status) && task.pause) {
    parts.push(`paused ${ago(task.pause.requested_at)}`);
  } else if (task.finished_at) {
    parts.push(`ended ${ago(task.finished_at)}`);
  }
  if (task.outcome && task.outcome !== "never_started" && !ACTIVE.has(task.status)) {
    parts.push(task.outcome.replace(/_/g, " "));
  }
  return parts.filter(Boolean).join(" · ");
}

// What the task's pool process used at its last heartbeat: RSS and CPU (100% = one core).
function usage(task) {
  const r = task.resources || {};
  const parts = [];
  if (r.rss_bytes != null) parts.push(mebibytes(r.rss_bytes));
  if (r.cpu_percent != null) parts.push(`CPU ${Math.round(r.cpu_percent)}%`);
  return parts.join(" · ");
}

function mebibytes(n) {
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : `${Math.round(n / (1 << 20))} MiB`;
}

function progressHint(task) {
  const p = task.progress || {};
  if (task.status === INITIAL) {
    if (task.eta && Date.parse(task.eta) > Date.now()) {
      return `starts in ${duration((Date.parse(task.eta) - Date.now()) / 1000)}`;
    }
    return "waiting for a worker";
  }
  if (p.done || p.failed) return `${p.done + p.failed} chunks`;
  if (working(task.status)) return "starting";
  if (task.outcome === "never_started") return "never started";
  return "—";
}

function etaText(task, beat) {
  const eta = task.progress && task.progress.eta_seconds;
  if (!working(task.status) || eta === null || eta === undefined) return "—";
  // The estimate was made at the last heartbeat; count down from there.
  return duration(Math.max(0, eta - (beat || 0))) || "—";
}

export function toggleDetail(id) {
  if (expanded.has(id)) expanded.delete(id);
  else expanded.add(id);
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
    ["Memory (RSS), CPU", usage(task) || "—"],
  ];
  if (task.error) entries.push(["Error", clip(task.error, 2000)]);
  if (task.pause) {
    const p = task.pause;
    entries.push(["Pause", `${clock(p.requested_at)} by ${p.by || "?"}${p.reason ? ` — ${p.reason}` : ""}`]);
  }
  if (task.cancel) {
    const c = task.cancel;
    entries.push(["Cancel", `${clock(c.requested_at)} by ${c.by || "?"}${c.forced ? ", forced" : ""}` +
      `${c.reason ? ` — ${c.reason}` : ""}`]);
  }
  const key = JSON.stringify(entries);
  if (row.detailKey === key) return;
  row.detailKey = key;
  const grid = el("dl", { class: "detail-grid" });
  for (const [name, value] of entries) {
    grid.append(el("dt", { text: name }), el("dd", {}, name === "Arguments" ? el("pre", { text: value }) : String(value)));
  }
  row.detail.firstChild.replaceChildren(grid);
}

// Ages and countdowns move with the clock, between loads.
export function tick() {
  for (const row of rows.values()) updateCells(row, row.task);
}
