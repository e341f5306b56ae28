// The rows below an open tree node: one page of its children (each of which may be open in
// turn), then a pager row when there are other pages, or a note while the first one loads.

import { el, setText } from "./dom.js";
import { label } from "./format.js";
import { buildRow, details, fillDetail, updateCells } from "./rows.js";
import { PAGE_SIZE, hasChildren, isOpen, pageOf, span } from "./trees.js";

const nested = new Map();   // child id -> its row inside an open tree
const pagers = new Map();   // node id -> the pager row under its children

export function nestedRow(id) {
  return nested.get(id) || null;
}

export function nestedRows() {
  return nested.values();
}

function childRow(task, level) {
  let row = nested.get(task.id);
  if (!row || row.level !== level) {
    row = buildRow(task, level);
    nested.set(task.id, row);
  }
  row.task = task;
  updateCells(row, task);
  return row;
}

// The rows for an open node's page, depth first. `seen` collects the children shown and
// `trees` every tree node among them (their totals are kept current).
export function branch(task, level, seen, trees) {
  const node = pageOf(task.id);
  if (!node) return [];
  const out = [];
  for (const child of node.items || []) {
    const row = childRow(child, level);
    seen.add(child.id);
    out.push(row.main);
    if (details.has(child.id)) {
      fillDetail(row, child);
      out.push(row.detail);
    }
    if (hasChildren(child)) {
      trees.push(child);
      if (isOpen(child.id)) out.push(...branch(child, level + 1, seen, trees));
    }
  }
  const pager = pagerRow(task, node, level);
  if (pager) {
    seen.add(`pager:${task.id}`);
    out.push(pager);
  }
  return out;
}

function pagerRow(task, node, level) {
  const paged = node.offset > 0 || Boolean(node.next);
  if (node.items && !paged && !node.error && node.items.length) return null;
  let row = pagers.get(task.id);
  if (!row) {
    row = buildPager(task, level);
    pagers.set(task.id, row);
  }
  const c = row.cells;
  let text;
  if (node.error) text = `Children could not be loaded: ${node.error.message}`;
  else if (!node.items) text = "Loading children…";
  else if (!node.items.length) text = "No children yet";
  else text = `Children of ${label(task)}: ${span(node)}`;
  setText(c.text, text);
  c.text.className = node.error ? "tree-span bad" : "tree-span";
  row.main.setAttribute("aria-busy", String(Boolean(node.loading)));
  c.first.hidden = node.back.length < 2;
  c.back.hidden = !node.back.length;
  c.more.hidden = !node.next;
  c.retry.hidden = !node.error;
  const next = Math.min(PAGE_SIZE, Math.max(0, node.count - node.offset - (node.items || []).length));
  c.more.setAttribute("aria-label", `Show the next ${next || PAGE_SIZE} children of ${label(task)}`);
  c.back.setAttribute("aria-label", `Show the previous ${PAGE_SIZE} children of ${label(task)}`);
  return row.main;
}

function buildPager(task, level) {
  const button = (action, text) => el("button", {
    type: "button", class: "btn btn-sm", dataset: { action }, text });
  const cells = {
    text: el("span", { class: "tree-span" }),
    first: button("first", "First"),
    back: button("back", "‹ Previous"),
    more: button("more", "More ›"),
    retry: button("retry", "Retry"),
  };
  const main = el("tr", { class: "tree-pager", dataset: { node: task.id } },
    el("td", { colspan: 8 }, el("div", { class: "tree-pager-line" },
      cells.text, cells.first, cells.back, cells.more, cells.retry)));
  main.style.setProperty("--level", String(level));
  return { main, cells };
}

// Forgets the rows of children no longer shown (their node closed, or another page came).
export function sweep(seen) {
  for (const id of nested.keys()) {
    if (!seen.has(id)) nested.delete(id);
  }
  for (const id of pagers.keys()) {
    if (!seen.has(`pager:${id}`)) pagers.delete(id);
  }
}
