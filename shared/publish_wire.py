"""A task message as Celery (protocol 2) and kombu's Redis transport put it in a queue's list,
and the `task-sent` event Celery publishes beside it, built without either library's
client: what the direct publish path (shared/publish.py) writes.

A worker cannot tell these from messages `celery.send_task` sent: same headers, same
properties, same body; only the ids, the delivery tag and the publishing thread's
reply-to address differ, as they do between any two messages.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from datetime import datetime
from typing import Any

from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset

# What kombu writes for a JSON body: a persistent message in the default exchange, routed by
# the queue's name, at priority 0 (the queue's own list; no priority sub-list).
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
PERSISTENT = 2
TRANSIENT = 1
# Events go to the `celeryev` topic exchange: a PUBLISH on `<fanout prefix>celeryev/<key>`.
EVENT_EXCHANGE = "celeryev"
SENT_ROUTING_KEY = "task.sent"

_NO_LINKS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _encoded(payload: Any) -> str:
    """kombu's virtual transports carry the serialized body base64-encoded."""
    return base64.b64encode(json.dumps(payload).encode()).decode("ascii")


def task_message(name: str, message_id: str, kwargs: dict[str, Any], queue: str, *,
                 eta: datetime | None, headers: dict[str, Any] | None, reply_to: str,
                 origin: str | None = None) -> dict[str, Any]:
    """The JSON object kombu pushes onto `queue`'s list for `send_task(name, kwargs=kwargs,
    task_id=message_id, queue=queue, eta=eta, headers=headers)`."""
    all_headers: dict[str, Any] = {
        "lang": "py", "task": name, "id": message_id, "shadow": None,
        "eta": eta.isoformat() if eta is not None else None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "root_id": message_id, "parent_id": None, "argsrepr": "()",
        # Our kwargs are a few short strings: repr is what Celery's saferepr gives them.
        "kwargsrepr": repr(kwargs), "origin": origin or anon_nodename(),
        "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {},
    }
    if headers:
        all_headers.update(headers)
    return {
        "body": _encoded([[], kwargs, _NO_LINKS]),
        "content-encoding": CONTENT_ENCODING,
        "content-type": CONTENT_TYPE,
        "headers": all_headers,
        "properties": {
            "correlation_id": message_id,
            "reply_to": reply_to,
            "delivery_mode": PERSISTENT,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def sent_event(message: dict[str, Any], *, clock: int, hostname: str | None = None
               ) -> dict[str, Any]:
    """The `task-sent` event Celery publishes for `message` when `task_send_sent_event` is
    on (Flower shows a task from the moment it was sent)."""
    headers = message["headers"]
    routing_key = message["properties"]["delivery_info"]["routing_key"]
    hostname = hostname or anon_nodename()
    body = {
        "hostname": hostname, "utcoffset": utcoffset(), "pid": os.getpid(), "clock": clock,
        "uuid": headers["id"], "root_id": headers["root_id"],
        "parent_id": headers["parent_id"], "name": headers["task"],
        "args": headers["argsrepr"], "kwargs": headers["kwargsrepr"],
        "retries": headers["retries"], "eta": headers["eta"], "expires": headers["expires"],
        "queue": routing_key, "exchange": "", "routing_key": routing_key,
        "timestamp": time.time(), "type": "task-sent",
    }
    return {
        "body": _encoded(body),
        "content-encoding": CONTENT_ENCODING,
        "content-type": CONTENT_TYPE,
        "headers": {"hostname": hostname},
        "properties": {
            "delivery_mode": TRANSIENT,
            "delivery_info": {"exchange": EVENT_EXCHANGE, "routing_key": SENT_ROUTING_KEY},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message)
