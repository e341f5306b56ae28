// Job trees on the page: which nodes are open, the one page of children each open node
// shows, and the subtree totals of every tree row. All of it comes from the tree endpoint,
// a page at a time: a node with 10,000 children costs one page, never the whole list.

import { API, call } from "./api.js";

export const PAGE_SIZE = 50;
const LIVE_MS = 3000;   // a subtree still at work has its totals read again this often
const GAP_MS = 1000;    // and never more often than this, however many events say so
const PARALLEL = 4;     // tree requests in flight at once

// node id -> { cursor, offset, back: [{cursor, offset}], items, next, count, error, loading,
// seq }
const open = new Map();
// node id -> { aggregate, at, key, stale }: the totals of the subtree below a tree row
const totals = new Map();
// child id -> { task, parent }: every child an open page holds
const index = new Map();
// node id -> when its totals last failed to load: tried again after LIVE_MS, not each poll
const misses = new Map();

export const hasChildren = (task) => Boolean(task && task.tree && task.tree.children > 0);
export const isOpen = (id) => open.has(id);
export const pageOf = (id) => open.get(id) || null;
export const totalsOf = (id) => totals.get(id) || null;
export const childTask = (id) => (index.has(id) ? index.get(id).task : null);
export const parentOf = (id) => (index.has(id) ? index.get(id).parent : null);

// What makes a node's totals out of date when its own row changes.
const keyOf = (task) => `${task.status}/${task.attempt}/${task.tree ? task.tree.children : 0}`;

function treePath(id, cursor, limit) {
  const q = new URLSearchParams({ limit: String(limit) });
  if (cursor) q.set("cursor", cursor);
  return `${API}/tasks/${encodeURIComponent(id)}/tree?${q}`;
}

function keep(id, task, aggregate) {
  totals.set(id, { aggregate, at: Date.now(), key: keyOf(task), stale: false });
}

function forget(id) {
  // Closing a node closes what was open below it: reopening starts from its first page.
  const node = open.get(id);
  open.delete(id);
  if (!node || !node.items) return;
  for (const child of node.items) {
    index.delete(child.id);
    forget(child.id);
  }
}

// `target`: where a page turn goes ({cursor, offset, back}); the node moves there only
// once that page has come, so the rows and the pager never disagree. A refresh (no target)
// reads the page shown again, and gives way to a turn under way.
async function loadPage(id, target = null) {
  const node = open.get(id);
  if (!node || (!target && node.loading)) return;
  const seq = ++node.seq;
  if (target) node.loading = true;
  const at = target || node;
  try {
    const { data } = await call("GET", treePath(id, at.cursor, PAGE_SIZE));
    // Closed, or sent to another page, while this one was on its way.
    if (open.get(id) !== node || node.seq !== seq) return;
    if (node.items) {
      for (const child of node.items) {
        if (index.get(child.id)?.parent === id) index.delete(child.id);
      }
    }
    if (target) Object.assign(node, target);
    node.items = data.items;
    node.next = data.next;
    node.count = data.task.tree ? data.task.tree.children : data.items.length;
    node.error = null;
    for (const child of data.items) index.set(child.id, { task: child, parent: id });
    keep(id, data.task, data.aggregate);
  } catch (err) {
    if (open.get(id) === node && node.seq === seq) node.error = err;
  } finally {
    if (node.seq === seq) node.loading = false;
  }
}

// Opens a closed node (its first page) or closes an open one; resolves once loaded.
export function toggle(id) {
  if (open.has(id)) {
    forget(id);
    return Promise.resolve();
  }
  const first = { cursor: null, offset: 0, back: [] };
  open.set(id, { ...first, items: null, next: null, count: 0, error: null, loading: false,
    seq: 0 });
  return loadPage(id, first);
}

// The page after the one shown, the one before it, the first one, or the same one again.
export function turn(id, where) {
  const node = open.get(id);
  // One turn at a time: the next one starts from the page this one brings.
  if (!node || node.loading) return Promise.resolve();
  let target = { cursor: node.cursor, offset: node.offset, back: node.back };
  if (where === "more" && node.next && node.items) {
    target = { cursor: node.next, offset: node.offset + node.items.length,
      back: [...node.back, { cursor: node.cursor, offset: node.offset }] };
  } else if (where === "back" && node.back.length) {
    target = { ...node.back[node.back.length - 1], back: node.back.slice(0, -1) };
  } else if (where === "first") {
    target = { cursor: null, offset: 0, back: [] };
  }
  node.error = null;
  return loadPage(id, target);
}

// A fresher copy of a task an open page holds (after an action on its row). False when no
// open page holds it.
export function replaceChild(task) {
  const entry = index.get(task.id);
  if (!entry) return false;
  const node = open.get(entry.parent);
  const at = node && node.items ? node.items.findIndex((t) => t.id === task.id) : -1;
  if (at >= 0) node.items[at] = task;
  entry.task = task;
  return true;
}

// Events say a subtree changed: its totals, and those of every node above it that the page
// knows, are read again at the next refresh. Without an id, every tree's are (`live`: only
// those of trees still at work, where a task the page does not know may have moved).
export function invalidate(id, live = false) {
  if (!id) {
    for (const entry of totals.values()) {
      if (!live || entry.aggregate.active > 0) entry.stale = true;
    }
    return;
  }
  for (let at = id, hops = 0; at && hops < 64; at = parentOf(at), hops += 1) {
    const entry = totals.get(at);
    if (entry) entry.stale = true;
    const root = childTask(at)?.tree?.root_id;
    if (root && totals.has(root)) totals.get(root).stale = true;
  }
}

function due(task, now) {
  const entry = totals.get(task.id);
  if (!entry) return now - (misses.get(task.id) || 0) >= LIVE_MS;
  if (now - entry.at < GAP_MS) return false;
  return entry.stale || entry.key !== keyOf(task) ||
    (entry.aggregate.active > 0 && now - entry.at >= LIVE_MS);
}

// Reads again what may have changed: each open node's page (with its totals) and the
// totals of each closed tree row shown, but only those due, a few requests at a time.
export async function refresh(shown) {
  const now = Date.now();
  const jobs = [];
  for (const task of shown) {
    if (!due(task, now) || open.get(task.id)?.loading) continue;
    if (open.has(task.id)) {
      jobs.push(() => loadPage(task.id));
    } else {
      jobs.push(async () => {
        try {
          const { data } = await call("GET", treePath(task.id, null, 1));
          keep(task.id, data.task, data.aggregate);
          misses.delete(task.id);
        } catch (_) {
          // Kept as it was; a later refresh tries again.
          misses.set(task.id, Date.now());
        }
      });
    }
  }
  const worker = async () => {
    while (jobs.length) await jobs.shift()();
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, jobs.length) }, worker));
}

// Work still goes on below an open node or a tree row: the page keeps polling fast.
export function busy() {
  for (const entry of totals.values()) {
    if (entry.aggregate.active > 0) return true;
  }
  return false;
}

// Drops the totals of tree rows no longer shown, so the map follows the page.
export function prune(shownIds) {
  for (const id of totals.keys()) {
    if (!shownIds.has(id) && !open.has(id)) totals.delete(id);
  }
  for (const id of misses.keys()) {
    if (!shownIds.has(id)) misses.delete(id);
  }
}

// The states of a subtree, most pressing first, without the empty ones.
export function byState(aggregate, order) {
  const counts = (aggregate && aggregate.by_status) || {};
  const known = order.filter((s) => counts[s] > 0).map((s) => [s, counts[s]]);
  const rest = Object.keys(counts).filter((s) => !order.includes(s) && counts[s] > 0)
    .map((s) => [s, counts[s]]);
  return [...known, ...rest];
}

// A count as it reads in a narrow cell: 950, 9,950, 12k, 1.2M.
export function compact(n) {
  if (n < 10000) return n.toLocaleString("en-US");
  if (n < 1e6) return `${Math.round(n / 1000)}k`;
  return `${(n / 1e6).toFixed(n < 1e7 ? 1 : 0)}M`;
}

// Which children of `count` a page shows: "51–100 of 10,000".
export function span(node) {
  if (!node.items || !node.items.length) return `0 of ${compact(node.count)}`;
  const from = node.offset + 1;
  const to = node.offset + node.items.length;
  return `${from.toLocaleString("en-US")}–${to.toLocaleString("en-US")} of ` +
    `${node.count.toLocaleString("en-US")}`;
}
