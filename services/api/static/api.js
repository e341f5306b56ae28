// The HTTP API: every call carries the bearer token, kept for this tab only. Reads without
// one work only where the server has PUBLIC_READS; the event stream opens with a ticket.

export const API = "/api/v1";
const TOKEN_KEY = "taskreaper.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// What the page does when a mutation has no token, or the server refused the one it had.
const auth = { missing: () => {}, changed: () => {} };
// Set once a read without a token was refused: until one is saved, reads are not tried.
let readsNeedToken = false;

export function onAuth(handlers) {
  Object.assign(auth, handlers);
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function saveToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  auth.changed();
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  auth.changed();
}

export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) {
    headers.Authorization = `Bearer ${t}`;
  } else if (method !== "GET") {
    auth.missing("Enter the API token first.");
    throw new ApiError(0, "no_token", "no API token set");
  } else if (readsNeedToken) {
    throw new ApiError(401, "no_token", "no API token set");
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "network", `cannot reach the API (${err.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    // A read refused for want of a token waits for one quietly: the banner asks for it.
    if (response.status === 401 && !t) {
      readsNeedToken = true;
      throw new ApiError(401, "no_token", "no API token set");
    }
    // An unknown or revoked token is forgotten; one whose role is too low is kept (it still
    // reads) and the refusal is shown as any other.
    if (response.status === 401 || (response.status === 403 && error.code === "forbidden")) {
      forgetToken();
    }
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `${response.status} ${response.statusText}`);
  }
  return { status: response.status, data };
}

function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== "" && value !== undefined && value !== null) q.set(key, value);
  }
  return q.toString();
}

export async function listTasks(params) {
  const { data } = await call("GET", `${API}/tasks?${query(params)}`);
  return data.items;
}

// The URL of one event stream: EventSource cannot send a header, so a short-lived ticket
// bought with the token goes in the query. Null without a token.
export async function eventsUrl() {
  if (!token()) return null;
  const { data } = await call("POST", `${API}/events/ticket`);
  return `${API}/events?ticket=${encodeURIComponent(data.ticket)}`;
}

export function taskPath(task, action) {
  return `${API}/tasks/${encodeURIComponent(task.id)}/${action}`;
}
