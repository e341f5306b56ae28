"""A backlog of N queued tasks, loaded fast: the rows by `INSERT ... SELECT generate_series`
in batches, and their Celery messages built from one real message and pushed into the
queue's Redis list with pipelined multi-value LPUSH.

The template is one message published through `shared.submit.publish`, the path every
submission takes (`celery.send_task` with kwargs `{"task_id": ...}` and `task_id` = the
row's message id, plus whatever headers that path adds), taken back out of Redis. Every
message is that one with the ids, the base64 body, kombu's delivery tag and any header
carrying the row's `queued_at` replaced; when the publish path also records the message id
in a set of pending messages, so does the load. The broker then holds what N submissions
would have left there.
"""

from __future__ import annotations

import base64
import inspect
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from bench.parked import PARKED_QUEUE
from shared.broker import make_celery
from shared.keys import Keys
from shared.queues import queue_lists
from shared.settings import Settings
from shared.submit import publish

# Rows per INSERT statement (and per transaction), and messages per LPUSH command.
ROW_BATCH = 50_000
PUSH_CHUNK = 1_000
# LPUSH commands per pipeline round trip (about 20 MB of messages).
PUSHES_PER_PIPELINE = 20


# The sample's `queued_at`: an instant whose epoch seconds appear nowhere else in a message.
_SAMPLE_QUEUED_AT = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)


@dataclass(frozen=True)
class MessageTemplate:
    """One Celery message as JSON text, with the per-task parts cut out."""

    fmt: str
    body_prefix: bytes
    body_suffix: bytes
    size: int
    # Headers that carry the row's `queued_at` (epoch seconds).
    queued_at_headers: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: bytes, queued_at: float | None = None) -> MessageTemplate:
        text = raw.decode()
        message = json.loads(text)
        headers, props = message["headers"], message["properties"]
        message_id = headers["id"]
        body = base64.b64decode(message["body"])
        task_id = json.loads(body)[1]["task_id"]
        prefix, suffix = body.split(task_id.encode())
        fmt = text.replace("{", "{{").replace("}", "}}")
        slots = [(message["body"], "{b}"), (props["delivery_tag"], "{d}"), (message_id, "{m}"),
                 (task_id, "{t}")]
        stamped = [k for k, v in headers.items() if queued_at is not None and v == queued_at]
        if stamped:
            slots.append((json.dumps(queued_at), "{q}"))
        for value, slot in slots:
            fmt = fmt.replace(value, slot)
        made = cls(fmt, prefix, suffix, len(raw), stamped)
        # The cut must give back the message it was cut from.
        again = json.loads(made.render(task_id, message_id, queued_at, props["delivery_tag"]))
        if again != message:
            raise ValueError("message template does not reproduce the message it came from")
        return made

    def render(self, task_id: str, message_id: str, queued_at: float | None = None,
               delivery_tag: str | None = None) -> bytes:
        body = base64.b64encode(self.body_prefix + task_id.encode() + self.body_suffix).decode()
        return self.fmt.format(b=body, d=delivery_tag or str(uuid.uuid4()), m=message_id,
                               t=task_id, q=json.dumps(queued_at)).encode()


@dataclass
class Sample:
    raw: bytes
    queued_at: float | None
    # The set of pending message ids the publish path added the sample's id to, if any.
    pending_key: str | None


async def _sample_message(redis: aioredis.Redis, settings: Settings, actor: str, queue: str
                          ) -> Sample:
    """Publishes one message through `shared.submit.publish` and takes it back out."""
    celery = make_celery(settings)
    task_id, message_id = uuid.uuid4(), uuid.uuid4()
    extra: dict[str, Any] = {}
    if "queued_at" in inspect.signature(publish).parameters:
        extra["queued_at"] = _SAMPLE_QUEUED_AT
    try:
        await publish(celery, actor, task_id, message_id, queue, **extra)
        pending_key = getattr(celery, "taskreaper_pending_key", None)
    finally:
        client = getattr(celery, "taskreaper_redis", None)
        if client is not None:
            client.close()
        celery.close()
    if pending_key is not None:
        if await redis.zscore(pending_key, str(message_id)) is None:
            pending_key = None
        else:
            await redis.zrem(pending_key, str(message_id))
    for key in queue_lists(Keys(settings.key_prefix), queue):
        raw = await redis.rpop(key)
        if raw is not None:
            return Sample(bytes(raw), _SAMPLE_QUEUED_AT.timestamp() if extra else None,
                          pending_key)
    raise RuntimeError(f"the sample message did not reach queue {queue}")


async def used_memory(redis_url: str) -> int:
    client = aioredis.from_url(redis_url)
    try:
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


async def _columns(pool: Any) -> set[str]:
    return {r["column_name"] for r in await pool.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'tasks'")}


def _insert_sql(columns: set[str], age_s: float) -> str:
    """Queued rows with a valid actor and queue, `{}` kwargs, fresh ids; every column that
    says when the task was created or entered `queued` is set `age_s` in the past. Returns
    the ids and when the row entered `queued` (epoch seconds)."""
    names = ["id", "actor", "queue", "kwargs", "status", "message_id"]
    values = ["gen_random_uuid()", "$1", "$2", "'{}'::jsonb", "'queued'", "gen_random_uuid()"]
    for col in ("created_at", "enqueued_at", "queued_at"):
        if col in columns:
            names.append(col)
            values.append(f"now() - make_interval(secs => {float(age_s)})")
    queued = "queued_at" if "queued_at" in columns else "enqueued_at"
    return (f"INSERT INTO tasks ({', '.join(names)}) SELECT {', '.join(values)} "
            f"FROM generate_series(1, $3) "
            f"RETURNING id::text, message_id::text, extract(epoch FROM {queued})::float8")


async def _push(redis: aioredis.Redis, key: str, template: MessageTemplate,
                ids: list[tuple[str, str, float]], pending_key: str | None) -> int:
    sent = 0
    async with redis.pipeline(transaction=False) as pipe:
        queued = 0
        for low in range(0, len(ids), PUSH_CHUNK):
            part = ids[low:low + PUSH_CHUNK]
            chunk = [template.render(tid, mid, at) for tid, mid, at in part]
            sent += sum(len(m) for m in chunk)
            if pending_key is not None:
                # As the publish path does: the id is pending before its message exists.
                now = time.time()
                pipe.zadd(pending_key, {mid: now for _, mid, _ in part})
            pipe.lpush(key, *chunk)
            queued += 1
            if queued >= PUSHES_PER_PIPELINE:
                await pipe.execute()
                queued = 0
        if queued:
            await pipe.execute()
    return sent


async def load(pool: Any, settings: Settings, n: int, *, actor: str = "distill",
               queue: str = PARKED_QUEUE, age_s: float = 0.0,
               progress: Any = None) -> dict[str, Any]:
    """N queued rows in `queue` and their N messages in its Redis list; returns timings and
    what the messages cost Redis."""
    redis = aioredis.from_url(settings.redis_url)
    try:
        memory_before = int((await redis.info("memory"))["used_memory"])
        sample = await _sample_message(redis, settings, actor, queue)
        template = MessageTemplate.parse(sample.raw, sample.queued_at)
        key = queue_lists(Keys(settings.key_prefix), queue)[0]
        sql = _insert_sql(await _columns(pool), age_s)
        rows_s = messages_s = 0.0
        sent_bytes = loaded = 0
        while loaded < n:
            batch = min(ROW_BATCH, n - loaded)
            started = time.perf_counter()
            ids = [(r[0], r[1], r[2]) for r in await pool.fetch(sql, actor, queue, batch)]
            rows_s += time.perf_counter() - started
            started = time.perf_counter()
            sent_bytes += await _push(redis, key, template, ids, sample.pending_key)
            messages_s += time.perf_counter() - started
            loaded += batch
            if progress is not None:
                progress(loaded)
        started = time.perf_counter()
        await pool.execute("VACUUM ANALYZE tasks")
        vacuum_s = time.perf_counter() - started
        memory_after = int((await redis.info("memory"))["used_memory"])
        length = sum([int(await redis.llen(k)) for k in queue_lists(Keys(settings.key_prefix),
                                                                     queue)])
        delta = memory_after - memory_before
        key_mib = {"queue_list": round(int(await redis.memory_usage(key) or 0) / 2**20, 1)}
        if sample.pending_key is not None:
            key_mib["pending_set"] = round(
                int(await redis.memory_usage(sample.pending_key) or 0) / 2**20, 1)
        return {
            "rows": n, "actor": actor, "queue": queue, "enqueued_age_s": age_s,
            "rows_s": round(rows_s, 2), "rows_per_s": round(n / rows_s) if rows_s else None,
            "messages_s": round(messages_s, 2),
            "messages_per_s": round(n / messages_s) if messages_s else None,
            "vacuum_analyze_s": round(vacuum_s, 2),
            "message_bytes": template.size, "messages_mib": round(sent_bytes / 2**20, 1),
            "queue_length": length,
            "table_mib": round(int(await pool.fetchval(
                "SELECT pg_total_relation_size('tasks')")) / 2**20, 1),
            "redis_used_memory_before_mib": round(memory_before / 2**20, 1),
            "redis_used_memory_after_mib": round(memory_after / 2**20, 1),
            "redis_delta_mib": round(delta / 2**20, 1),
            "redis_bytes_per_message": round(delta / n) if n else None,
            # MEMORY USAGE of each key (an estimate from a sample of elements).
            "redis_keys_mib": key_mib,
            "queued_at_headers": template.queued_at_headers,
            "pending_set": sample.pending_key,
        }
    finally:
        await redis.aclose()


async def unlink(redis_url: str, keys: list[str]) -> None:
    """Removes large keys without blocking the server (UNLINK frees them in the background)."""
    client = aioredis.from_url(redis_url)
    try:
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()
