"""A task message as Celery (protocol 2) and kombu's Redis transport put it in a queue's list,
and the `task-sent` event Celery publishes beside it, written without either library's
client: what the direct publish path (shared/publish.py) sends.

A worker cannot tell these from messages `celery.send_task` sent: same headers, same
properties, same body; only the ids, the delivery tag and the publishing thread's
reply-to address differ, as they do between any two messages (tests/test_publish.py holds
them side by side). The JSON is filled into fixed text rather than built as dicts and
serialized: a batch writes thousands of them, and all but a few fields never change.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from datetime import datetime

from celery.utils.time import utcoffset

# The fixed parts, in the order kombu serializes them. `%(x)s` fields are JSON values
# (quoted strings, numbers, null) except `body`, already base64 text. A message is
# persistent (delivery_mode 2) in the default exchange, routed by the queue's name, at
# priority 0 (the queue's own list); an event is transient on the `celeryev` exchange.
_MESSAGE = (
    '{"body": "%(body)s", "content-encoding": "utf-8", "content-type": "application/json", '
    '"headers": {"lang": "py", "task": %(task)s, "id": %(id)s, "shadow": null, '
    '"eta": %(eta)s, "expires": null, "group": null, "group_index": null, "retries": 0, '
    '"timelimit": [null, null], "root_id": %(id)s, "parent_id": null, "argsrepr": "()", '
    '"kwargsrepr": %(kwargsrepr)s, "origin": %(origin)s, "ignore_result": null, '
    '"replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}%(extra)s}, '
    '"properties": {"correlation_id": %(id)s, "reply_to": %(reply_to)s, '
    '"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": %(queue)s}, '
    '"priority": 0, "body_encoding": "base64", "delivery_tag": "%(tag)s"}}')
_BODY = ('[[], {"task_id": %(task_id)s}, '
         '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}]')
_EVENT_BODY = (
    '{"hostname": %(origin)s, "utcoffset": %(utcoffset)s, "pid": %(pid)d, "clock": %(clock)d, '
    '"uuid": %(id)s, "root_id": %(id)s, "parent_id": null, "name": %(task)s, "args": "()", '
    '"kwargs": %(kwargsrepr)s, "retries": 0, "eta": %(eta)s, "expires": null, '
    '"queue": %(queue)s, "exchange": "", "routing_key": %(queue)s, '
    '"timestamp": %(timestamp)r, "type": "task-sent"}')
_EVENT = (
    '{"body": "%(body)s", "content-encoding": "utf-8", "content-type": "application/json", '
    '"headers": {"hostname": %(origin)s}, "properties": {"delivery_mode": 1, '
    '"delivery_info": {"exchange": "celeryev", "routing_key": "task.sent"}, "priority": 0, '
    '"body_encoding": "base64", "delivery_tag": "%(tag)s"}}')
EVENT_EXCHANGE = "celeryev"
SENT_ROUTING_KEY = "task.sent"

_q = json.dumps


def _b64(text: str) -> str:
    """kombu's virtual transports carry the serialized body base64-encoded."""
    return base64.b64encode(text.encode()).decode("ascii")


class Writer:
    """Writes the messages of one publishing thread: its reply-to address and node name."""

    def __init__(self, *, reply_to: str, origin: str) -> None:
        self._reply_to = _q(reply_to)
        self._origin = _q(origin)
        self._utcoffset = _q(utcoffset())
        self._names: dict[str, str] = {}

    def _name(self, name: str) -> str:
        """An actor's or queue's name as JSON (a few of them, written thousands of times)."""
        quoted = self._names.get(name)
        if quoted is None:
            quoted = self._names[name] = _q(name)
        return quoted

    def message(self, name: str, message_id: uuid.UUID, task_id: uuid.UUID, queue: str, *,
                eta: datetime | None, headers: dict[str, float] | None = None
                ) -> tuple[str, dict[str, str]]:
        """What kombu pushes onto `queue`'s list for `send_task(name, kwargs={"task_id":
        str(task_id)}, task_id=str(message_id), queue=queue, eta=eta, headers=headers)`, and
        the fields its `task-sent` event shares."""
        task = str(task_id)
        fields = {"task": self._name(name), "id": f'"{message_id}"', "queue": self._name(queue),
                  "eta": _q(eta.isoformat()) if eta is not None else "null",
                  # Our kwargs are one id: repr is what Celery's saferepr gives them.
                  "kwargsrepr": _q(repr({"task_id": task})), "origin": self._origin}
        extra = "".join(f", {_q(k)}: {_q(v)}" for k, v in (headers or {}).items())
        text = _MESSAGE % {**fields, "body": _b64(_BODY % {"task_id": f'"{task}"'}),
                           "extra": extra, "reply_to": self._reply_to, "tag": uuid.uuid4()}
        return text, fields

    def sent_event(self, fields: dict[str, str], *, clock: int) -> str:
        """The `task-sent` event Celery publishes when `task_send_sent_event` is on (Flower
        shows a task from the moment it was sent)."""
        body = _EVENT_BODY % {**fields, "utcoffset": self._utcoffset, "pid": os.getpid(),
                              "clock": clock, "timestamp": time.time()}
        return _EVENT % {"body": _b64(body), "origin": self._origin, "tag": uuid.uuid4()}
