"""Celery's Redis transport, hardened against a broker restart.

When the broker connection is lost, kombu (5.7) can crash the whole worker on two
paths that touch a channel whose connection is already gone: restoring the
unacknowledged messages while closing it, and acknowledging a message that arrived
on it. Both are skipped here. Nothing is lost: Redis hands such messages out again
after the visibility timeout, and the DB claim makes that redelivery harmless.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual


class QoS(kombu_redis.QoS):
    restore_at_shutdown = False

    def _orphaned(self) -> bool:
        return self.channel.connection is None

    def ack(self, delivery_tag: str) -> None:
        if self._orphaned():
            virtual.QoS.ack(self, delivery_tag)  # local bookkeeping only
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._orphaned():
            virtual.QoS.ack(self, delivery_tag)
            return
        super().reject(delivery_tag, requeue=requeue)


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
