"""The broker's side of a cancel fence: the covered messages leave the queues' Redis lists, a
window at a time, one Lua call per window.

Walking from each list's oldest end (kombu pushes on the left and pops on the right), a window
of messages is read; a message is covered when our header says its task was queued before the
fence and its actor is in the fence's scope. Where the window is the list's oldest end, it is
cut off in one LTRIM and what stays is pushed back in its order; further in (messages kept
before it), the covered ones are marked and removed in one LREM that stops at the window. Their
ids leave the set of pending messages in one ZREM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from shared.db import Record
from shared.queues import queue_lists
from shared.submit import QUEUED_AT_HEADER

# Messages looked at per call: one call keeps Redis busy for a few milliseconds (see
# `make bench`, section scale), and its replies to a window's worth of ids stay far below
# Lua's limit on unpacked values (8,000).
PURGE_WINDOW = 500

PURGE_SCRIPT = """
-- Kombu writes a message's JSON in one layout: the body (base64: no quote in it), the
-- encoding, the type, the headers, then the properties. The text from the headers' brace to
-- the first `}, "properties": {` after it decodes only if it is the whole headers object
-- (JSON holds that sequence inside no string), which spares decoding the body and the
-- properties of each message; a message in any other layout is decoded whole.
local LEAD = '", "content-encoding": "utf-8", "content-type": "application/json", "headers": {'
local TAIL = '}, "properties": {'
local function headers(raw)
  if string.sub(raw, 1, 10) == '{"body": "' then
    local quote = string.find(raw, '"', 11, true)
    if quote and string.sub(raw, quote, quote + #LEAD - 1) == LEAD then
      local from = quote + #LEAD - 1
      local to = string.find(raw, TAIL, from, true)
      if to then
        local ok, h = pcall(cjson.decode, string.sub(raw, from, to))
        if ok and type(h) == 'table' then return h end
      end
    end
  end
  local ok, msg = pcall(cjson.decode, raw)
  if ok and type(msg) == 'table' and type(msg['headers']) == 'table' then
    return msg['headers']
  end
  return nil
end

local len = redis.call('LLEN', KEYS[1])
local offset = tonumber(ARGV[1])
if offset >= len then return {0, 0, 1} end
local items = redis.call('LRANGE', KEYS[1], -(offset + tonumber(ARGV[2])), -(offset + 1))
local fence, actor, header = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local n = #items
local covered, ids, kept = {}, {}, {}
for i = 1, n do
  local h = headers(items[i])
  local queued = h and tonumber(h[header])
  covered[i] = queued ~= nil and queued < fence and (actor == '' or h['task'] == actor)
  if covered[i] then
    if type(h['id']) == 'string' then ids[#ids + 1] = h['id'] end
  else
    kept[#kept + 1] = items[i]
  end
end
local removed = n - #kept
if #ids > 0 then redis.call('ZREM', KEYS[2], unpack(ids)) end
if removed > 0 and offset == 0 then
  redis.call('LTRIM', KEYS[1], 0, -(n + 1))
  if #kept > 0 then redis.call('RPUSH', KEYS[1], unpack(kept)) end
elseif removed > 0 then
  local marker = '\\0taskreaper:purged'
  for i = 1, n do
    if covered[i] then redis.call('LSET', KEYS[1], -(offset + n - i + 1), marker) end
  end
  redis.call('LREM', KEYS[1], -removed, marker)
end
local done = 0
if offset + n >= len then done = 1 end
return {removed, #kept, done}
"""


@dataclass
class FencePurge:
    """Where the walk over one fence's queues stands (kept in memory: a new leader walks
    again from the start, which only costs time)."""

    lists: list[str]
    offsets: dict[str, int] = field(default_factory=dict)
    removed: int = 0

    @classmethod
    def of(cls, fence: Record, keys: Any) -> FencePurge:
        queues = [fence["queue"]] if fence["queue"] else list(fence["queues"])
        return cls([key for q in queues for key in queue_lists(keys, q)])

    async def walk(self, script: Any, fence: Record, pending: str, *, window: int,
                   until: float) -> bool:
        """Windows until every list is walked (True) or the time is up (False)."""
        actor = fence["actor"] or ""
        while self.lists:
            key = self.lists[0]
            offset = self.offsets.get(key, 0)
            removed, kept, done = await script(
                keys=[key, pending],
                args=[offset, window, repr(fence["at_epoch"]), actor, QUEUED_AT_HEADER])
            self.removed += int(removed)
            self.offsets[key] = offset + int(kept)
            if done:
                self.lists.pop(0)
            if time.monotonic() > until:
                return not self.lists
        return True
