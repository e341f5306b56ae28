// What this browser keeps: the API token (this tab only) and the chosen theme.

import { forgetToken, saveToken, token } from "./api.js";
import { $, setText, toast } from "./dom.js";
import { connectEvents, maybeRefreshSystem, refreshActors, refreshTasks } from "./sync.js";

const THEME_KEY = "taskreaper.theme";

export function renderToken() {
  const has = Boolean(token());
  $("token-banner").hidden = has;
  setText($("token-open"), has ? "Token set" : "API token");
}

export function keepToken(value) {
  const t = value.trim();
  if (!t) return false;
  saveToken(t);
  toast("Token saved for this tab", "ok");
  // Reads and the live stream need the token: load what it may see, and listen.
  connectEvents();
  refreshActors();
  refreshTasks();
  maybeRefreshSystem(true);
  return true;
}

export function dropToken() {
  forgetToken();
  toast("Token forgotten", "ok");
  connectEvents();
}

export function askForToken(message) {
  if (message) toast(message, "warn");
  const dialog = $("token-dialog");
  $("token-dialog-input").value = "";
  if (!dialog.open) dialog.showModal();
  $("token-dialog-input").focus();
}

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

export function restoreTheme() {
  applyTheme(localStorage.getItem(THEME_KEY));
}

export function toggleTheme() {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "light" : "dark";
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
}
