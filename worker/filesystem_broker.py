"""kombu's filesystem transport, made safe for several processes: the embedded default's broker.

kombu writes a message file in place (open, then write) and a consumer may pick it up in between:
it reads an empty file and the worker dies on the JSON error, and the message is lost. Here a
message is written under a temporary name and renamed into the queue folder (rename is atomic on one
filesystem), and a consumer claims a file by renaming it into its own processing folder, so two
consumers can never read the same file, or half of one.

Selected by `worker/celery_app.py` for `filesystem://` broker URLs.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

SCHEME = "leadsync-fs"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        temporary = os.path.join(self.data_folder_out, f"tmp_{uuid.uuid4()}.partial")  # never matches a queue
        with open(temporary, "wb") as file:
            file.write(str_to_bytes(dumps(payload)))
        os.replace(temporary, os.path.join(self.data_folder_out, name))

    def _get(self, queue: str) -> Any:
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.processed_folder, f"{os.getpid()}_{name}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # another consumer took it first
            with open(claimed, "rb") as file:
                payload = file.read()
            os.remove(claimed)
            return loads(bytes_to_str(payload))
        raise filesystem.Empty()


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
