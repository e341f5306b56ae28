// The HTTP API: reads are public, mutations carry the operator's bearer token, kept for
// this tab only.

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
  if (method !== "GET") {
    const t = token();
    if (!t) {
      auth.missing("Enter the API token first.");
      throw new ApiError(0, "no_token", "no API token set");
    }
    headers.Authorization = `Bearer ${t}`;
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
    if (response.status === 401 || response.status === 403) forgetToken();
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

export function taskPath(task, action) {
  return `${API}/tasks/${encodeURIComponent(task.id)}/${action}`;
}
