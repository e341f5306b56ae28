// What the operator does: cancel (one, the filtered ones, all), resume, submit. Each one
// asks the server, says how it went, and leaves the rest to the next refresh.

import { API, call, taskPath } from "./api.js";
import { $, setText, toast } from "./dom.js";
import { label } from "./format.js";
import { ACTIVE, CANCEL_PENDING, HELD, INITIAL } from "./states.js";
import { bulkPlan, store } from "./store.js";
import { showTask } from "./views.js";
import { refreshSoon } from "./sync.js";

let confirmAction = null;   // what the open confirmation dialog will do on OK
let confirmFields = { reason: true, force: true };  // what it asks for, and sends

// `reason` and `forceable` say which fields the dialog shows (and its request carries).
export function askConfirm({ title, text, ok, force, action, reason = true, forceable = true,
  back = "Keep running" }) {
  const dialog = $("confirm-dialog");
  setText($("confirm-title"), title);
  setText($("confirm-text"), text);
  setText($("confirm-ok"), ok);
  setText($("confirm-back"), back);
  $("confirm-reason").value = "";
  $("confirm-force").checked = Boolean(force);
  $("confirm-reason").closest("label").hidden = !reason;
  $("confirm-force").closest("label").hidden = !forceable;
  confirmFields = { reason, force: forceable };
  confirmAction = action;
  dialog.showModal();
  (reason ? $("confirm-reason") : $("confirm-ok")).focus();
}

export async function onConfirm(event) {
  event.preventDefault();
  const action = confirmAction;
  confirmAction = null;
  const body = {};
  if (confirmFields.force) body.force = $("confirm-force").checked;
  const reason = $("confirm-reason").value.trim();
  if (confirmFields.reason && reason) body.reason = reason;
  $("confirm-dialog").close();
  if (action) await action(body);
}

export function dropConfirm() {
  confirmAction = null;
}

export function confirmCancelOne(task) {
  const pending = CANCEL_PENDING.has(task.status);
  const n = task.tree ? task.tree.children : 0;
  // The server cancels a node's whole subtree in one step: the dialog says so.
  const below = n ? ` Its ${n} ${n === 1 ? "child" : "children"} and everything below them are cancelled with it.` : "";
  askConfirm({
    title: pending ? `Force-stop ${label(task)}?` : `Cancel ${label(task)}${n ? " and its tree" : ""}?`,
    text: (task.status === INITIAL
      ? "It has not started, so it will never run."
      : "The task stops at its next check; one that does not stop within the grace period is killed. Saved chunks are kept and it can be resumed later.") + below,
    ok: pending ? "Force stop" : "Cancel task",
    force: pending,
    action: (body) => cancelOne(task, body),
  });
}

async function cancelOne(task, body) {
  try {
    const { status, data } = await call("POST", taskPath(task, "cancel"), body);
    showTask(data);
    toast(status === 202 ? `${label(data)} is ${data.status}` : `${label(data)} was already ${data.status}`, "ok");
  } catch (err) {
    if (err.code !== "no_token") toast(`Cancel failed: ${err.message}`, "bad");
  }
  refreshSoon();
}

export function confirmCancelFiltered() {
  const plan = bulkPlan();
  if (!plan) return;
  if (plan.serverSide) {
    askConfirm({
      title: `Cancel every ${plan.actor} task?`,
      text: `Every queued, running and paused ${plan.actor} task is cancelled, including any not shown on this page.`,
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
        const { status } = await call("POST", taskPath(task, "cancel"), body);
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

export function confirmCancelAll() {
  const counts = (store.system && store.system.counts) || {};
  const active = [...ACTIVE, ...HELD].reduce((sum, s) => sum + (counts[s] || 0), 0);
  askConfirm({
    title: "Cancel every task?",
    text: `All queued, running and paused tasks of every actor are cancelled (${active} unfinished now). Saved chunks are kept; cancelled tasks can be resumed.`,
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

export async function resume(task, button) {
  button.disabled = true;
  try {
    const { data } = await call("POST", taskPath(task, "resume"), {});
    showTask(data);
    toast(`${label(data)} resumed from its checkpoint`, "ok");
  } catch (err) {
    if (err.code !== "no_token") toast(`Resume failed: ${err.message}`, "bad");
  } finally {
    button.disabled = false;
  }
  refreshSoon();
}

export async function onSubmit(event) {
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
