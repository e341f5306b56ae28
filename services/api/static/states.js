// The task states and the moves between them, as the server defines them
// (GET /api/v1/states): the page keeps no list of its own. load() fills these bindings
// once, before anything renders; importers see the filled values.

export let STATES = [];       // every state, in the server's order
export let ATTENTION = [];    // the order groups are shown in: what needs attention first
export let INITIAL = "";      // where a task starts: it has not run yet
export let ACTIVE = new Set();
export let TERMINAL = new Set();
export let RESUMABLE = new Set();
export let CANCELLABLE = new Set();
export let CANCEL_PENDING = new Set();  // a cancel is under way; only a forced one adds anything
export let EXECUTING = new Set();       // a live execution holds the task: it sends heartbeats
export let HELD = new Set();            // paused: nothing moves it on but a resume or a cancel
export let PAUSABLE = new Set();
export let PAUSE_PENDING = new Set();   // a pause is under way: it saves its work and stops

export function load(table) {
  STATES = table.states;
  ATTENTION = table.attention;
  INITIAL = table.initial;
  ACTIVE = new Set(table.active);
  TERMINAL = new Set(table.terminal);
  RESUMABLE = new Set(table.resumable);
  CANCELLABLE = new Set(table.cancellable);
  CANCEL_PENDING = new Set(table.cancel_pending);
  EXECUTING = new Set(table.executing);
  HELD = new Set(table.held);
  PAUSABLE = new Set(table.pausable);
  PAUSE_PENDING = new Set(table.pause_pending);
}

// A plain cancel still moves it on (nothing has asked it to stop yet).
export const stoppable = (s) => CANCELLABLE.has(s) && !CANCEL_PENDING.has(s);
// Asked to stop: a cancel or a pause is under way.
export const stopping = (s) => CANCEL_PENDING.has(s) || PAUSE_PENDING.has(s);
// Executing, with no cancel or pause under way.
export const working = (s) => EXECUTING.has(s) && !stopping(s);
// Ended with nothing to resume: the work is complete.
export const complete = (s) => TERMINAL.has(s) && !RESUMABLE.has(s);
