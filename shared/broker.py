"""Celery configuration shared by the worker, the API, the reaper and taskctl.

Only the worker imports actor code; everyone else builds a bare app from this
configuration and addresses tasks by name.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.keys import Keys
from shared.publish import close_publishers
from shared.settings import Settings

# A revoke the reaper broadcasts for messages whose rows are already settled carries this
# argument, so workers do not look them up to cancel them again; any other revoke (Flower,
# the celery CLI, users' code) becomes a cancel.
SETTLED_REVOKE = "taskreaper_settled"


def celery_config(settings: Settings) -> dict[str, Any]:
    keys = Keys(settings.key_prefix)
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "global_keyprefix": keys.celery_prefix,
            "visibility_timeout": settings.visibility_timeout,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        },
        "broker_pool_limit": 4,
        "task_default_queue": settings.default_queue,
        # The DB is the record of outcomes; Celery keeps none.
        "task_ignore_result": True,
        "result_backend": None,
        # A message leaves Redis only when its execution ended, so a crash cannot drop it;
        # our claim makes the redelivery harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        # Flower's task list: the actor is the task's name, our task id is in its kwargs.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "broker_heartbeat": 0,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0.1,
                                      "interval_step": 0.2, "interval_max": 0.5},
    }


class BrokerApp(Celery):
    """A Celery app that also lets go of the direct publish path's connections on close."""

    def close(self) -> None:
        super().close()
        close_publishers(self)


def make_celery(settings: Settings, main: str = "taskreaper") -> Celery:
    app = BrokerApp(main, set_as_current=False)
    app.conf.update(celery_config(settings))
    app.taskreaper_pending_key = Keys(settings.key_prefix).pending
    # shared.submit publishes through shared.publish (direct) or kombu's client.
    app.taskreaper_publish_mode = settings.publish_mode
    return app
