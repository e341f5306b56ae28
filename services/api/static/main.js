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
import { renderCounts, renderParams, renderStateFilter, rowTask, tick, toggleDetail } from "./views.js";

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
  const row = button && button.closest("tr.task-row");
  const task = row && rowTask(row.dataset.id);
  if (!task) return;
  if (button.dataset.action === "cancel") confirmCancelOne(task);
  else if (button.dataset.action === "resume") resume(task, button);
  else if (button.dataset.action === "pause") pause(task, button);
  else if (button.dataset.action === "details") toggleDetail(task.id);
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
