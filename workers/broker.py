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

`install()` points the `redis`, `rediss` and `filesystem` URL schemes at these classes; it runs
when the Celery app is created (workers.celery), in the web process and the worker alike.
"""
import os
from queue import Empty

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem, redis
from redis.exceptions import ConnectionError as RedisConnectionError


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


def install() -> None:
    """Make the broker URL schemes resolve to the transports above."""
    TRANSPORT_ALIASES["redis"] = "workers.broker:RedisTransport"
    TRANSPORT_ALIASES["rediss"] = "workers.broker:RedisTransport"
    TRANSPORT_ALIASES["filesystem"] = "workers.broker:FilesystemTransport"
