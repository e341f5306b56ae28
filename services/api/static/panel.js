// The system panel: the reaper, the workers, the queues and what disagrees.

import { $, el } from "./dom.js";
import { duration, shortId } from "./format.js";

function section(title, ...children) {
  return el("div", {}, el("div", { class: "sys-head", text: title }), ...children);
}

function list(items) {
  return el("ul", { class: "sys-list" }, ...items);
}

function item(name, value, cls, title) {
  return el("li", {}, el("span", { class: "mono", title: title || name, text: name }),
    el("span", { class: `sys-value ${cls || ""}`, text: value }));
}

function reaperItems(reaper) {
  const status = reaper.status || {};
  const items = [item("leader", reaper.leader || "none", reaper.leader ? "ok" : "bad", reaper.leader || "no reaper holds the lock")];
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
    items.push(item(key.replace(/_at$/, "").replace(/_ms$/, " took").replace(/_/g, " "), shown, "", String(value)));
  }
  if (Object.keys(status).some((k) => k.startsWith("found:"))) {
    items.push(...(findings.length ? findings : [item("repairs", "none needed", "ok")]));
  }
  return items;
}

export function renderSystem(s) {
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
  const bad = Object.entries(inc).filter(([, ids]) => ids && ids.length);
  const incItems = bad.length
    ? bad.map(([kind, ids]) => el("li", {},
      el("div", { class: "warn", text: `${kind.replace(/_/g, " ")} · ${ids.length}` }),
      el("div", { class: "mono small muted", text: ids.slice(0, 5).map(shortId).join(" ") + (ids.length > 5 ? " …" : "") })))
    : [el("li", { class: "ok", text: "None: the database agrees with the workers" })];

  $("system").replaceChildren(
    section("Reaper", list(reaperItems(s.reaper || {}))),
    section(`Workers · ${workers.length}`, list(workerItems)),
    section("Queues", list(queueItems)),
    section("Inconsistencies", el("ul", { class: "sys-list" }, ...incItems)),
  );
}

export function renderSystemError(err) {
  $("system").replaceChildren(el("p", { class: "bad small", text: `Status unavailable: ${err.message}` }));
}
