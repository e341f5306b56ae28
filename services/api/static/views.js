// The counts, the filters, the submit form's actor list and the task table: the list's
// tasks grouped by state, an open tree's children below their node. Rows are built once per
// task and updated in place, so progress bars keep animating.

import { branch, nestedRow, nestedRows, sweep } from "./branches.js";
import { $, el, setText } from "./dom.js";
import { buildRow, details, fillDetail, rowOf, updateCells } from "./rows.js";
import { ACTIVE, ATTENTION, STATES } from "./states.js";
import { bulkPlan, store, visibleTasks } from "./store.js";
import { hasChildren, invalidate, isOpen, prune, replaceChild, toggle, turn } from "./trees.js";

const rows = new Map();      // task id -> its row in the list itself
const groups = new Map();    // state -> its group header row
let shownTrees = [];         // the tree nodes the table shows, open or not

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
  const seen = new Set();
  const trees = [];
  for (const [status, list] of byState) {
    if (!list.length) continue;
    list.sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
    nodes.push(groupRow(status, list.length));
    for (const task of list) {
      const row = taskRow(task);
      nodes.push(row.main);
      if (details.has(task.id)) {
        fillDetail(row, task);
        nodes.push(row.detail);
      }
      if (hasChildren(task)) {
        trees.push(task);
        if (isOpen(task.id)) nodes.push(...branch(task, 1, seen, trees));
      }
    }
  }
  for (const id of rows.keys()) {
    if (!store.tasks.has(id)) rows.delete(id);
  }
  sweep(seen);
  shownTrees = trees;
  prune(new Set(trees.map((t) => t.id)));
  place($("task-rows"), nodes);
  $("empty").hidden = tasks.length > 0;
  const active = tasks.filter((t) => ACTIVE.has(t.status)).length;
  setText($("shown"), `${tasks.length} shown, ${active} active`);
  renderBulk();
}

// The tree nodes on the page, whose totals and open pages the refresh keeps current.
export function treesShown() {
  return shownTrees;
}

// Moves only the rows whose position changed, so progress bars keep animating and a focused
// button (a tree's toggle, its pager) keeps the focus. What goes is taken out first: a new
// page of children then slides in without moving the rows around it.
function place(parent, nodes) {
  const keep = new Set(nodes);
  for (let node = parent.firstChild; node;) {
    const next = node.nextSibling;
    if (!keep.has(node)) node.remove();
    node = next;
  }
  let cursor = parent.firstChild;
  for (const node of nodes) {
    if (node === cursor) {
      cursor = cursor.nextSibling;
    } else {
      parent.insertBefore(node, cursor);
    }
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

// The task a row shows right now (the row's buttons act on it): a row of the list or one
// inside an open tree.
export function rowTask(tr) {
  const row = rowOf(tr);
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

// A task as an action's answer has it: wherever the page shows it, it shows this copy. An
// action on a tree's node changed its subtree too: the totals above and below it are due.
export function showTask(task) {
  if (!replaceChild(task) || store.tasks.has(task.id)) store.tasks.set(task.id, task);
  invalidate(task.id);
  renderTasks();
}

// A task changed by an event: its rows are updated in place.
export function updateRow(task) {
  const inner = nestedRow(task.id);
  if (inner && inner.task === task) updateCells(inner, task);
  const row = rows.get(task.id);
  if (!row || store.tasks.get(task.id) !== task) return;
  row.task = task;
  updateCells(row, task);
  if (!visibleTasks().includes(task)) renderTasks();
  else renderBulk();
}

// Opens or closes a tree node: its row says so at once, its children follow when loaded.
export async function toggleTree(task) {
  const loaded = toggle(task.id);
  renderTasks();
  await loaded;
  renderTasks();
}

// Another page of a node's children ("more", "back", "first", "retry").
export async function turnPage(id, where, pager) {
  const loaded = turn(id, where);
  renderTasks();
  await loaded;
  renderTasks();
  // The button pressed may be gone (no page after the last): the pager keeps the focus.
  const lost = !document.activeElement || document.activeElement === document.body;
  if (lost && pager.isConnected) {
    const next = [...pager.querySelectorAll("button")].find((b) => !b.hidden);
    if (next) next.focus();
  }
}

export function toggleDetail(id) {
  if (details.has(id)) details.delete(id);
  else details.add(id);
  renderTasks();
}

// Ages and countdowns move with the clock, between loads.
export function tick() {
  for (const row of rows.values()) updateCells(row, row.task);
  for (const row of nestedRows()) updateCells(row, row.task);
}
