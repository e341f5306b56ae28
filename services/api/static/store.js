// The page's model: the tasks it holds, the filters, the actor catalogue, the system status.
// Views read it; the loaders in sync.js and the actions write it.

import { stoppable } from "./states.js";

export const store = {
  tasks: new Map(),
  filter: { status: "", actor: "" },
  actors: [],
  system: null,
  // Bumped by each filter change: a load started before it is dropped when it lands.
  generation: 0,
};

export function visibleTasks() {
  const { status, actor } = store.filter;
  return [...store.tasks.values()].filter((t) =>
    (!status || t.status === status) && (!actor || t.actor === actor));
}

// What "Cancel filtered" would do, or null when no filter is set.
export function bulkPlan() {
  const { status, actor } = store.filter;
  if (!status && !actor) return null;
  const targets = visibleTasks().filter((t) => stoppable(t.status));
  // Filtering by actor alone matches what cancel-all can do in one server-side step.
  return { serverSide: !status && Boolean(actor), targets, actor };
}
