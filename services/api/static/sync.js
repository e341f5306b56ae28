// Keeping the page current: loads through the API, server-sent events for news, and a
// poll (faster while anything is active) for whatever an event did not say. The list holds
// tree roots (and tasks of no tree); an open tree's pages and totals follow each load.

import { API, call, eventsUrl, listTasks } from "./api.js";
import { $, setText } from "./dom.js";
import { renderSystem, renderSystemError } from "./panel.js";
import { ACTIVE, HELD, STATES } from "./states.js";
import { store } from "./store.js";
import { busy, childTask, invalidate, refresh } from "./trees.js";
import {
  renderActors, renderCounts, renderTasks, showFilter, treesShown, updateRow,
} from "./views.js";

const EVENT_TYPES = ["task.submitted", "task.cancel_requested", "tasks.cancel_all",
  "task.resumed", "task.changed", "task.progress", "task.pause_requested", "tasks.pause_all",
  "tasks.resume_all", "task.preempted", "task.resume_requested", "tasks.swept",
  "tree.cancel_requested", "tree.pause_requested", "tree.resumed", "tree.swept",
  "tasks.submitted", "worker.drain_requested", "worker.draining", "message"];
// What changes a tree's totals: these are read again (at most once a second per tree).
const TREE_EVENTS = new Set(["tree.cancel_requested", "tree.pause_requested", "tree.resumed",
  "tree.swept", "tasks.submitted", "task.submitted", "task.resumed", "task.resume_requested",
  "tasks.cancel_all", "tasks.pause_all", "tasks.resume_all", "tasks.swept"]);
const POLL_ACTIVE_MS = 2000;
const POLL_IDLE_MS = 6000;
const SYSTEM_MS = 5000;
const HISTORY_LIMIT = 100;
const ACTIVE_LIMIT = 200;

const timers = { poll: null, event: null };
let loading = null;   // the task load under way, if any
let again = false;    // a load was asked for while one ran: run once more after it
let systemAt = 0;

async function fetchTasks() {
  const { status, actor } = store.filter;
  // A chosen state finds its tasks wherever they sit in a tree: the tile counted them all.
  if (status) return listTasks({ status, actor, limit: ACTIVE_LIMIT });
  // Otherwise roots only: a tree's children are read a page at a time below its row.
  // Active and paused roots are fetched by state so a long history never pushes them off
  // the page.
  const lists = await Promise.all([
    ...[...ACTIVE, ...HELD].map((s) => listTasks({ status: s, actor, roots: true,
      limit: ACTIVE_LIMIT })),
    listTasks({ actor, roots: true, limit: HISTORY_LIMIT }),
  ]);
  return lists.flat();
}

export async function refreshTasks() {
  // One load at a time; a request arriving meanwhile runs once more afterwards.
  if (loading) {
    again = true;
    return loading;
  }
  const generation = store.generation;
  loading = (async () => {
    try {
      const items = await fetchTasks();
      if (generation !== store.generation) return;
      store.tasks = new Map(items.map((t) => [t.id, t]));
      renderTasks();
      setText($("updated"), `Updated ${new Date().toLocaleTimeString()}`);
      await refresh(treesShown());
      if (generation === store.generation) renderTasks();
    } catch (err) {
      if (err.code !== "no_token") setText($("updated"), `Refresh failed: ${err.message}`);
    }
  })();
  try {
    await loading;
  } finally {
    loading = null;
  }
  if (again) {
    again = false;
    await refreshTasks();
  }
  return undefined;
}

async function refreshSystem() {
  try {
    const { data } = await call("GET", `${API}/system/status`);
    store.system = data;
    renderCounts();
    renderSystem(data);
  } catch (err) {
    renderSystemError(err);
  }
}

export async function refreshActors() {
  try {
    const { data } = await call("GET", `${API}/actors`);
    store.actors = data.items;
    renderActors();
  } catch (_) {
    // The catalogue fills in on the next refresh.
  }
}

export async function maybeRefreshSystem(force) {
  if (!force && Date.now() - systemAt < SYSTEM_MS) return;
  systemAt = Date.now();
  await refreshSystem();
}

export function schedule() {
  clearTimeout(timers.poll);
  if (document.hidden) return;
  const active = busy() || [...store.tasks.values()].some((t) => ACTIVE.has(t.status));
  timers.poll = setTimeout(async () => {
    await Promise.all([refreshTasks(), maybeRefreshSystem()]);
    schedule();
  }, active ? POLL_ACTIVE_MS : POLL_IDLE_MS);
}

export function refreshSoon() {
  // Events come in bursts (a cancel-all touches many tasks): one refresh per burst.
  if (timers.event) return;
  timers.event = setTimeout(async () => {
    timers.event = null;
    await Promise.all([refreshTasks(), maybeRefreshSystem(true)]);
  }, 200);
}

export function setFilter(change) {
  Object.assign(store.filter, change);
  showFilter();
  store.generation += 1;
  renderCounts();
  renderTasks();
  refreshTasks().then(schedule);
}

// --- live events ------------------------------------------------------------------------

// A ticket opens one stream, so the browser's own reconnect (same URL) cannot work: each
// reconnect here buys a new ticket, waiting longer after each failure.
const stream = { source: null, timer: null, wait: 1000 };

function streamDown(text) {
  $("live").dataset.state = "error";
  setText($("live-text"), text);
}

export async function connectEvents() {
  clearTimeout(stream.timer);
  if (stream.source) stream.source.close();
  stream.source = null;
  let url;
  try {
    url = await eventsUrl();
  } catch (err) {
    url = undefined;
  }
  if (url === null) {
    streamDown("Needs a token");
    return; // saving a token connects again (session.js)
  }
  if (url === undefined) {
    streamDown("Reconnecting");
    stream.timer = setTimeout(connectEvents, stream.wait);
    stream.wait = Math.min(2 * stream.wait, 30000);
    return;
  }
  const source = new EventSource(url);
  stream.source = source;
  source.addEventListener("open", () => {
    stream.wait = 1000;
    $("live").dataset.state = "open";
    setText($("live-text"), "Live");
    refreshSoon();
  });
  source.addEventListener("error", () => {
    if (stream.source !== source) return;
    source.close();
    stream.source = null;
    streamDown("Reconnecting");
    stream.timer = setTimeout(connectEvents, stream.wait);
    stream.wait = Math.min(2 * stream.wait, 30000);
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
  const id = event && typeof event.task_id === "string" ? event.task_id : null;
  // A task may be on the page twice: in the list (a state filter finds children) and in
  // its open tree.
  const tasks = id ? [...new Set([store.tasks.get(id), childTask(id)])].filter(Boolean) : [];
  if (type === "task.progress") {
    // Progress needs no round trip: patch the row, unless it is from an older attempt.
    // A task not on the page comes in with the next poll or state change; a tree's totals
    // with the next refresh.
    for (const task of tasks) {
      if (typeof event.attempt === "number" && event.attempt < task.attempt) continue;
      const p = task.progress;
      for (const key of ["done", "failed", "total", "current_chunk", "eta_seconds"]) {
        if (key in event) p[key] = event[key];
      }
      p.percent = p.total ? Math.round((1000 * (p.done + p.failed)) / p.total) / 10 : null;
      if (typeof event.at === "number") task.heartbeat_at = new Date(event.at * 1000).toISOString();
      updateRow(task);
    }
    return;
  }
  for (const task of tasks) {
    if (typeof event.status === "string" && STATES.includes(event.status)) {
      task.status = event.status;
      updateRow(task);
    }
  }
  // A change inside a tree: what is known of its place is marked; an unknown task may be
  // deep in any tree shown, whose live totals then follow at their own pace.
  if (TREE_EVENTS.has(type)) invalidate(null);
  else if (id && tasks.length) invalidate(id);
  else if (type === "task.changed") invalidate(null, true);
  refreshSoon();
}
