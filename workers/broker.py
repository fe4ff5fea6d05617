"""Broker transports that survive what kombu 5.7.0's own do not (the newest release on PyPI).

- Redis restarted while a task is unacknowledged: the worker's consumer closes the broken
  connection, which first detaches the transport (`connection.client = None`) and then closes the
  channel; closing tries to put the unacknowledged message back, builds a new Redis client from the
  detached connection and dies with `AttributeError: 'NoneType' object has no attribute 'hostname'`
  ("Unrecoverable error"; the worker stops consuming for good). Here a channel whose connection is
  detached raises Redis's ConnectionError instead, which kombu ignores while closing, and the worker
  reconnects. The message stays in Redis's unacked set and is handed out again after the visibility
  timeout; the task skips a redelivered run that has ended (workers.tasks).
- The file-system broker's folders removed (`rm -rf var/broker`): kombu's `os.listdir` raises
  FileNotFoundError, again an "Unrecoverable error". Here the folders are created again and polling
  goes on. Messages that were in the removed folder are lost with it: those runs stay queued and
  are started again by hand (docs/operations.md).

- RabbitMQ closes a consumer's channel with `PRECONDITION_FAILED - delivery acknowledgement on
  channel N timed out` when a delivery stays unacknowledged past its `consumer_timeout` (30 min by
  default), which a late-acknowledged sweep of hours always does. py-amqp raises that as a channel
  error, Celery's consumer stops on it ("Unrecoverable error: PreconditionFailed") and the worker
  exits once its sweep is done. Here that one closure is a lost connection instead: the consumer
  reconnects, RabbitMQ puts the delivery back, and the task skips it as a duplicate of its live run
  (workers.tasks); the sweep itself, in a pool process, never notices (docs/operations.md, RabbitMQ).

`install()` points the `redis`, `rediss`, `filesystem`, `amqp` and `pyamqp` URL schemes at these
classes; it runs when the Celery app is created (workers.celery), in the web process and the worker alike.
"""
import logging
import os
from queue import Empty

from amqp import spec
from amqp.exceptions import ConnectionForced
from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem, pyamqp, redis
from redis.exceptions import ConnectionError as RedisConnectionError

logger = logging.getLogger(__name__)

# RabbitMQ's words when a delivery outlived consumer_timeout (reply code 406, PRECONDITION_FAILED).
CONSUMER_TIMEOUT_TEXT = "delivery acknowledgement"
PRECONDITION_FAILED = 406


class RedisChannel(redis.Channel):
    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed (it is being re-established)")
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(redis.Transport):
    Channel = RedisChannel


class FilesystemChannel(filesystem.Channel):
    def _folders(self) -> list[str]:
        folders = [self.data_folder_in, self.data_folder_out, str(self.control_folder)]
        if self.store_processed:
            folders.append(self.processed_folder)
        return [folder for folder in folders if folder]

    def _recreate_folders(self) -> None:
        for folder in self._folders():
            os.makedirs(folder, exist_ok=True)

    def _get(self, queue):
        try:
            return super()._get(queue)
        except FileNotFoundError:
            self._recreate_folders()
            raise Empty() from None

    def _put(self, queue, payload, **kwargs):
        try:
            return super()._put(queue, payload, **kwargs)
        except ChannelError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise
            self._recreate_folders()
            return super()._put(queue, payload, **kwargs)

    def _size(self, queue):
        try:
            return super()._size(queue)
        except FileNotFoundError:
            self._recreate_folders()
            return 0

    def _purge(self, queue):
        try:
            return super()._purge(queue)
        except FileNotFoundError:
            self._recreate_folders()
            return 0

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        self._recreate_folders()
        return super()._queue_bind(exchange, routing_key, pattern, queue)


class FilesystemTransport(filesystem.Transport):
    Channel = FilesystemChannel


class AmqpChannel(pyamqp.Channel):
    def _on_close(self, reply_code, reply_text, class_id, method_id):
        if (reply_code == PRECONDITION_FAILED and CONSUMER_TIMEOUT_TEXT in str(reply_text)
                and not self.connection.is_closing and not self.is_closing):
            self.send_method(spec.Channel.CloseOk)
            logger.warning("RabbitMQ closed the channel: %s; reconnecting (the delivery comes back and is "
                           "skipped as a duplicate of its live run)", reply_text)
            raise ConnectionForced(str(reply_text), (class_id, method_id))
        return super()._on_close(reply_code, reply_text, class_id, method_id)


class AmqpConnection(pyamqp.Connection):
    Channel = AmqpChannel


class AmqpTransport(pyamqp.Transport):
    Connection = AmqpConnection


def install() -> None:
    """Make the broker URL schemes resolve to the transports above."""
    TRANSPORT_ALIASES["redis"] = "workers.broker:RedisTransport"
    TRANSPORT_ALIASES["rediss"] = "workers.broker:RedisTransport"
    TRANSPORT_ALIASES["filesystem"] = "workers.broker:FilesystemTransport"
    TRANSPORT_ALIASES["amqp"] = "workers.broker:AmqpTransport"
    TRANSPORT_ALIASES["pyamqp"] = "workers.broker:AmqpTransport"
