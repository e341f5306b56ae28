// One task's row: built once, then updated in place so its progress bar keeps animating.
// A tree node's row also carries the toggle that opens its children and its subtree's
// totals (progress, tasks by state, ETA) where its own would be.

import { el, setClass, setText } from "./dom.js";
import { ago, clip, clock, duration, label, secondsSince, shortId } from "./format.js";
import {
  ACTIVE, ATTENTION, CANCELLABLE, CANCEL_PENDING, EXECUTING, HELD, INITIAL, PAUSABLE, RESUMABLE,
  complete, working,
} from "./states.js";
import { byState, compact, hasChildren, isOpen, totalsOf } from "./trees.js";

const BEAT_LATE_S = 10;
const BEAT_DEAD_S = 30;

export const details = new Set();  // ids whose details are open
const owners = new WeakMap();      // a row's <tr> -> the row (its buttons act on its task)

export function rowOf(tr) {
  return owners.get(tr) || null;
}

// `level`: how far below a row of the list itself (0) the row sits in an open tree.
export function buildRow(task, level = 0) {
  const cells = {
    badge: el("span", { class: "badge" }),
    toggle: el("button", { type: "button", class: "btn btn-ghost btn-icon tree-toggle", dataset: { action: "tree" }, "aria-expanded": "false", text: "▸" }),
    actor: el("span", { class: "task-actor" }),
    id: el("span", { class: "task-id mono", title: task.id, text: shortId(task.id) }),
    sub: el("div", { class: "task-sub" }),
    treeLine: el("div", { class: "tree-sub" }),
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
    el("td", { class: "c-task" }, el("div", { class: "task-line" }, cells.toggle, cells.actor, cells.id),
      cells.sub, cells.treeLine),
    el("td", { class: "c-progress" }, cells.bar, el("div", { class: "progress-label" }, cells.count, cells.failed)),
    el("td", { class: "c-beat" }, cells.beat),
    el("td", { class: "c-eta" }, cells.eta),
    el("td", { class: "c-attempt" }, cells.attempt),
    el("td", { class: "c-worker" }, cells.worker),
    el("td", { class: "c-actions" }, cells.pause, cells.cancel, cells.resume, cells.more));
  if (level) main.style.setProperty("--level", String(level));
  const row = { main, cells, task, level, detail: el("tr", { class: "detail" }, el("td", { colspan: 8 })) };
  owners.set(main, row);
  return row;
}

export function updateCells(row, task) {
  const c = row.cells;
  const status = task.status;
  row.main.dataset.status = status;
  setClass(row.main, `task-row s-${status}${row.level ? " tree-child" : ""}`);
  setClass(c.badge, `badge s-${status}`);
  setText(c.badge, status);
  setText(c.actor, task.actor);
  setText(c.sub, subline(task));

  const tree = hasChildren(task);
  const sum = tree ? totalsOf(task.id) : null;
  updateToggle(c.toggle, task, tree);
  updateTreeLine(row, task, sum);
  if (sum) updateTreeProgress(c, task, sum);
  else updateProgress(c, task);

  const beat = EXECUTING.has(status) ? secondsSince(task.heartbeat_at) : null;
  setText(c.beat, beat === null ? "—" : `${duration(beat)} ago`);
  setClass(c.beat, beat === null ? "muted" : beat >= BEAT_DEAD_S ? "age-dead" : beat >= BEAT_LATE_S ? "age-late" : "age-ok");
  c.beat.title = task.heartbeat_at ? `Last heartbeat ${clock(task.heartbeat_at)}` : "No heartbeat yet";
  setText(c.eta, sum ? treeEta(sum) : etaText(task, beat));

  setText(c.attempt, task.attempt ? `#${task.attempt}` : "—");
  c.attempt.title = task.resumes ? `Resumed ${task.resumes} time(s)` : "";
  setText(c.worker, task.worker || "—");
  c.worker.title = task.worker || "";
  setClass(c.worker, task.worker ? "worker mono" : "worker muted");

  const pending = CANCEL_PENDING.has(status);
  const whole = tree ? " and everything below it" : "";
  c.cancel.hidden = !CANCELLABLE.has(status);
  setText(c.cancel, pending ? "Force" : "Cancel");
  c.cancel.title = pending ? "Kill now instead of waiting for the grace period" : `Cancel this task${whole}`;
  c.pause.hidden = !PAUSABLE.has(status);
  c.pause.title = `Save its work${whole}, stop, and wait for a resume`;
  c.resume.hidden = !RESUMABLE.has(status);
  c.resume.title = HELD.has(status) ? `Queue it${whole} again: it goes on from its checkpoint` : `Start a new attempt${whole} from its checkpoint`;
  const open = details.has(task.id);
  c.more.setAttribute("aria-expanded", String(open));
  setText(c.more, open ? "▾" : "▸");
  if (open) fillDetail(row, task);
}

function updateToggle(button, task, tree) {
  // A leaf keeps an invisible toggle, so names line up down a level of the tree.
  button.classList.toggle("leaf", !tree);
  button.disabled = !tree;
  if (!tree) {
    button.setAttribute("aria-hidden", "true");
    return;
  }
  button.removeAttribute("aria-hidden");
  const open = isOpen(task.id);
  const n = task.tree.children;
  button.setAttribute("aria-expanded", String(open));
  setText(button, open ? "▾" : "▸");
  const text = open ? `Hide the children of ${label(task)}`
    : `Show the ${n.toLocaleString("en-US")} ${n === 1 ? "child" : "children"} of ${label(task)}`;
  button.setAttribute("aria-label", text);
  button.title = text;
}

// "3 children" and the subtree's tasks by state, or where a child shown on its own belongs.
function updateTreeLine(row, task, sum) {
  const tree = task.tree;
  let parts = [];
  if (hasChildren(task)) {
    const n = tree.children;
    parts.push(["", `${compact(n)} ${n === 1 ? "child" : "children"}`]);
    if (sum) parts = parts.concat(byState(sum.aggregate, ATTENTION).map(([s, k]) => [s, `${compact(k)} ${s}`]));
  } else if (tree && tree.parent_id && !row.level) {
    parts.push(["", `child of ${shortId(tree.parent_id)}`]);
  }
  const key = JSON.stringify(parts);
  if (row.treeKey === key) return;
  row.treeKey = key;
  row.cells.treeLine.hidden = parts.length === 0;
  row.cells.treeLine.title = sum ? `The whole tree below ${label(task)}, itself included: ${sum.aggregate.nodes} tasks` : "";
  row.cells.treeLine.replaceChildren(...parts.map(([s, text]) =>
    el("span", { class: s ? `tree-count s-${s}` : "tree-count" }, s ? el("span", { class: "tree-dot" }) : null, text)));
}

function paint(c, status, p, active) {
  const total = p.total || 0;
  const known = total > 0;
  // A task can end before its first heartbeat recorded a total: full, if it completed.
  const donePct = known ? Math.min(100, (100 * p.done) / total) : complete(status) && !active ? 100 : 0;
  const failedPct = known ? Math.min(100 - donePct, (100 * p.failed) / total) : 0;
  const percent = known ? Math.round(donePct + failedPct) : null;
  c.done.style.width = `${donePct}%`;
  c.failedBar.style.width = `${failedPct}%`;
  c.bar.dataset.percent = percent === null ? "" : String(percent);
  c.bar.dataset.done = String(p.done || 0);
  if (percent === null) c.bar.removeAttribute("aria-valuenow");
  else c.bar.setAttribute("aria-valuenow", String(percent));
  setText(c.failed, p.failed ? `${compact(p.failed)} failed` : "");
  return { known, percent, total };
}

function updateProgress(c, task) {
  const p = task.progress || {};
  const { known, percent, total } = paint(c, task.status, p, false);
  c.bar.classList.toggle("unknown", !known && working(task.status));
  c.bar.title = "";
  setText(c.count, known ? `${p.done + p.failed} / ${total} · ${percent}%` : progressHint(task));
}

// The subtree's chunks: what every task below the node, and the node itself, got through.
function updateTreeProgress(c, task, sum) {
  const agg = sum.aggregate;
  const { known, percent, total } = paint(c, task.status, agg, agg.active > 0);
  const executing = Object.keys(agg.by_status || {}).some((s) => EXECUTING.has(s));
  c.bar.classList.toggle("unknown", !known && executing);
  // Tasks that have not reported a size yet are counted at the mean size of the others.
  const about = agg.unknown_totals > 0 && known ? "≈ " : "";
  c.bar.title = `Chunks of the whole tree: ${agg.done + agg.failed} of ${total || "?"} ` +
    `(${agg.nodes} tasks${about ? `, ${agg.unknown_totals} of unknown size` : ""})`;
  setText(c.count, known ? `${about}${compact(agg.done + agg.failed)} / ${compact(total)} · ${percent}%`
    : executing ? "starting" : agg.active ? "not started" : "—");
}

function treeEta(sum) {
  const agg = sum.aggregate;
  if (!agg.active || agg.eta_seconds === null || agg.eta_seconds === undefined) return "—";
  // The estimate was made when the totals were read; count down from there.
  return duration(Math.max(0, agg.eta_seconds - (Date.now() - sum.at) / 1000)) || "—";
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

export function fillDetail(row, task) {
  const entries = [
    ["Id", task.id],
    ["Queue", task.queue],
    // The list carries no arguments (a page costs the same whatever tasks were given).
    ["Arguments", task.kwargs === undefined ? "—" : clip(JSON.stringify(task.kwargs), 2000)],
    ["Created", clock(task.created_at)],
    ["Started", task.started_at ? clock(task.started_at) : "—"],
    ["Finished", task.finished_at ? clock(task.finished_at) : "—"],
    ["Current chunk", task.progress && task.progress.current_chunk != null ? task.progress.current_chunk : "—"],
    ["Outcome", task.outcome || "—"],
    ["Resumes", task.resumes || 0],
    ["Memory (RSS), CPU", usage(task) || "—"],
  ];
  const tree = task.tree;
  if (tree) {
    entries.push(["Tree", `depth ${tree.depth}, ${tree.children} children` +
      `${tree.fail_fast ? ", fail-fast" : ""}`]);
    if (tree.parent_id) entries.push(["Parent", tree.parent_id], ["Root", tree.root_id]);
  }
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
