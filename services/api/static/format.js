// How times, sizes and ids read on the page.

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function secondsSince(iso) {
  if (!iso) return null;
  const at = Date.parse(iso);
  return isNaN(at) ? null : Math.max(0, (Date.now() - at) / 1000);
}

export function ago(iso) {
  const s = secondsSince(iso);
  return s === null ? "" : `${duration(s)} ago`;
}

export function clock(iso) {
  const at = new Date(iso);
  return isNaN(at) ? "" : at.toLocaleString();
}

export function clip(text, limit) {
  // A document passed as an argument can be megabytes; the page shows its start.
  const value = String(text);
  return value.length <= limit ? value : `${value.slice(0, limit)}… (${value.length - limit} more characters)`;
}

export function shortId(id) {
  return String(id).slice(0, 8);
}

export function label(task) {
  return `${task.actor} ${shortId(task.id)}`;
}
