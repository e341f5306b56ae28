// Taskreaper dashboard: reads the public API, mutates with the operator's bearer token.
// The entry module: wires the page's controls to the other modules and starts the loads.

import {
  confirmCancelAll, confirmCancelFiltered, confirmCancelOne, dropConfirm, onConfirm, onSubmit,
  resume,
} from "./actions.js";
import { confirmPauseAll, confirmResumeAll, pause } from "./pausing.js";
import { API, call, onAuth } from "./api.js";
import { $, setText } from "./dom.js";
import { askForToken, dropToken, keepToken, renderToken, restoreTheme, toggleTheme } from "./session.js";
import { load } from "./states.js";
import { store } from "./store.js";
import {
  connectEvents, maybeRefreshSystem, refreshActors, refreshSoon, refreshTasks, schedule, setFilter,
} from "./sync.js";
import { hasChildren, isOpen, parentOf } from "./trees.js";
import {
  renderCounts, renderParams, renderStateFilter, rowTask, tick, toggleDetail, toggleTree, turnPage,
} from "./views.js";

async function loadStates() {
  // Everything else reads the states; the table never changes while the server runs.
  for (let wait = 500; ; wait = Math.min(2 * wait, 5000)) {
    try {
      const { data } = await call("GET", `${API}/states`);
      load(data);
      return;
    } catch (err) {
      setText($("updated"), `Refresh failed: ${err.message}`);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

function wireSession() {
  onAuth({ missing: askForToken, changed: renderToken });
  $("token-banner").addEventListener("submit", (e) => {
    e.preventDefault();
    if (keepToken($("token-input").value)) $("token-input").value = "";
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (keepToken($("token-dialog-input").value)) $("token-dialog").close();
  });
  $("token-open").addEventListener("click", () => askForToken());
  $("token-close").addEventListener("click", () => $("token-dialog").close());
  $("token-forget").addEventListener("click", () => {
    dropToken();
    $("token-dialog").close();
  });
  $("theme-toggle").addEventListener("click", toggleTheme);
}

function onRowClick(event) {
  const button = event.target.closest("button[data-action]");
  const pager = button && button.closest("tr.tree-pager");
  if (pager) {
    turnPage(pager.dataset.node, button.dataset.action, pager);
    return;
  }
  const row = button && button.closest("tr.task-row");
  const task = row && rowTask(row);
  if (!task) return;
  // On a tree's node these act on its whole subtree: the server does, in one step.
  if (button.dataset.action === "cancel") confirmCancelOne(task);
  else if (button.dataset.action === "resume") resume(task, button);
  else if (button.dataset.action === "pause") pause(task, button);
  else if (button.dataset.action === "details") toggleDetail(task.id);
  else if (button.dataset.action === "tree") toggleTree(task);
}

// The first thing to focus in a row: its tree toggle if it has one, else its first button.
function focusIn(tr) {
  const target = [...tr.querySelectorAll("button")]
    .find((b) => !b.hidden && !b.disabled && !b.classList.contains("leaf"));
  if (target) target.focus();
}

// The tree keys, on any button of a row: right opens a node (or, open, goes to its first
// child), left closes it (or, closed, goes to its parent).
function onRowKey(event) {
  if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
  const tr = event.target.closest("button") && event.target.closest("tr.task-row");
  const task = tr && rowTask(tr);
  if (!task) return;
  const tree = hasChildren(task);
  const open = tree && isOpen(task.id);
  if (event.key === "ArrowRight") {
    if (!tree) return;
    let below = tr.nextElementSibling;
    while (below && below.classList.contains("detail")) below = below.nextElementSibling;
    if (!open) toggleTree(task);
    else if (below && below.classList.contains("tree-child")) focusIn(below);
  } else if (open) {
    toggleTree(task);
  } else if (parentOf(task.id) && tr.classList.contains("tree-child")) {
    let above = tr.previousElementSibling;
    while (above && above.dataset.id !== parentOf(task.id)) above = above.previousElementSibling;
    if (above) focusIn(above);
  } else {
    return;
  }
  event.preventDefault();
}

function onCountClick(event) {
  const tile = event.target.closest("button.count");
  if (!tile) return;
  const value = tile.dataset.status;
  setFilter({ status: store.filter.status === value ? "" : value });
}

function wireTasks() {
  $("counts").addEventListener("click", onCountClick);
  $("task-rows").addEventListener("click", onRowClick);
  $("task-rows").addEventListener("keydown", onRowKey);
  $("filter-status").addEventListener("change", (e) => setFilter({ status: e.target.value }));
  $("filter-actor").addEventListener("change", (e) => setFilter({ actor: e.target.value }));
  $("cancel-filtered").addEventListener("click", confirmCancelFiltered);
  $("cancel-all").addEventListener("click", confirmCancelAll);
  $("pause-all").addEventListener("click", confirmPauseAll);
  $("resume-all").addEventListener("click", confirmResumeAll);
  $("confirm-form").addEventListener("submit", onConfirm);
  $("confirm-back").addEventListener("click", () => $("confirm-dialog").close());
  $("confirm-dialog").addEventListener("close", dropConfirm);
  $("submit-form").addEventListener("submit", onSubmit);
  $("submit-actor").addEventListener("change", renderParams);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refreshSoon();
    schedule();
  });
}

async function start() {
  restoreTheme();
  wireSession();
  renderToken();
  await loadStates();
  renderStateFilter();
  wireTasks();
  renderCounts();
  connectEvents();
  refreshActors();
  setInterval(tick, 1000);
  setInterval(refreshActors, 60000);
  Promise.all([refreshTasks(), maybeRefreshSystem(true)]).then(schedule);
}

start();
