// Pause and resume: one task from its row, or everything at once for a maintenance window.
// A pause keeps each task's saved work; a resume queues it again to go on from there.

import { API, call, taskPath } from "./api.js";
import { toast } from "./dom.js";
import { label } from "./format.js";
import { askConfirm } from "./actions.js";
import { HELD, PAUSABLE } from "./states.js";
import { store } from "./store.js";
import { showTask } from "./views.js";
import { refreshSoon } from "./sync.js";

export async function pause(task, button) {
  button.disabled = true;
  try {
    const { status, data } = await call("POST", taskPath(task, "pause"), {});
    showTask(data);
    toast(status === 202 ? `${label(data)} is ${data.status}` : `${label(data)} was already ${data.status}`, "ok");
  } catch (err) {
    if (err.code !== "no_token") toast(`Pause failed: ${err.message}`, "bad");
  } finally {
    button.disabled = false;
  }
  refreshSoon();
}

function count(states) {
  const counts = (store.system && store.system.counts) || {};
  return [...states].reduce((sum, s) => sum + (counts[s] || 0), 0);
}

export function confirmPauseAll() {
  askConfirm({
    title: "Pause every task?",
    text: `Queued tasks are held, running ones save their work and stop (${count(PAUSABLE)} now). Nothing runs until they are resumed; nothing done is lost.`,
    ok: "Pause all tasks",
    forceable: false,
    action: async (body) => {
      try {
        const { data } = await call("POST", `${API}/tasks/pause-all`, body);
        toast(`Paused ${data.paused} queued, pausing ${data.pausing} running (${data.took_ms} ms)`, "ok");
      } catch (err) {
        if (err.code !== "no_token") toast(`Pause all failed: ${err.message}`, "bad");
      }
      refreshSoon();
    },
  });
}

export function confirmResumeAll() {
  askConfirm({
    title: "Resume every paused task?",
    text: `Each paused task is queued again (${count(HELD)} now) and goes on from its checkpoint.`,
    ok: "Resume all tasks",
    reason: false,
    forceable: false,
    back: "Keep paused",
    action: async (body) => {
      try {
        const { data } = await call("POST", `${API}/tasks/resume-all`, body);
        toast(`Resumed ${data.resumed} (${data.took_ms} ms)`, "ok");
      } catch (err) {
        if (err.code !== "no_token") toast(`Resume all failed: ${err.message}`, "bad");
      }
      refreshSoon();
    },
  });
}
