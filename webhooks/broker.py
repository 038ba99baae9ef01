"""The embedded broker: kombu's filesystem transport, made safe for several processes.

Chosen over kombu's SQLAlchemy transport because it needs no server and no new dependency, puts
no polling load on Postgres, and a lost message costs nothing: Postgres holds every delivery
and its retry state, and the beat sweep re-dispatches whatever a lost message should have done.
It only works for processes on one machine, which is all the embedded default promises;
set ``CELERY_BROKER_URL`` to Redis or RabbitMQ for more.

Two changes to the stock transport, which can hand a half-written file to a consumer or the same
file to two consumers when the temporary folder is on another filesystem:

- a message is written to a hidden temporary file and renamed into place (atomic publish);
- a consumer takes a message by renaming it into a ``.processing`` folder next to it (atomic
  claim on one filesystem: exactly one consumer wins), reads it and deletes it.
"""

from __future__ import annotations

import os
import time
import uuid
from queue import Empty
from typing import Any

from kombu.transport import filesystem
from kombu.utils.json import dumps, loads


class Channel(filesystem.Channel):
    @property
    def _processing_folder(self) -> str:
        folder = os.path.join(self.data_folder_in, ".processing")
        os.makedirs(folder, exist_ok=True)
        return folder

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # Wall-clock milliseconds first, so files sort in publish order across processes.
        name = f"{time.time_ns() // 1_000_000:015d}_{uuid.uuid4().hex}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = os.path.join(self.data_folder_out, f".{name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(dumps(message).encode())  # type: ignore[no-untyped-call]
        os.replace(tmp, final)

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}.msg"
        folder = self.data_folder_in
        for filename in sorted(os.listdir(folder)):
            if filename.startswith(".") or filename.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self._processing_folder, filename)
            try:
                os.rename(os.path.join(folder, filename), claimed)
            except FileNotFoundError:
                continue  # another consumer took it
            try:
                with open(claimed, "rb") as fh:
                    payload = fh.read()
            finally:
                os.unlink(claimed)
            return loads(payload.decode())  # type: ignore[no-untyped-call]
        raise Empty()

    def _size(self, queue: str) -> int:
        wanted = f"{queue}.msg"
        return sum(
            1 for f in os.listdir(self.data_folder_in) if not f.startswith(".") and f.partition(".")[2] == wanted
        )

    def _purge(self, queue: str) -> int:
        wanted = f"{queue}.msg"
        count = 0
        for filename in os.listdir(self.data_folder_in):
            if filename.startswith(".") or filename.partition(".")[2] != wanted:
                continue
            try:
                os.unlink(os.path.join(self.data_folder_in, filename))
                count += 1
            except FileNotFoundError:
                pass
        return count


class Transport(filesystem.Transport):
    Channel = Channel
