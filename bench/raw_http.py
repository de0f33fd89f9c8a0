"""A bare HTTP/1.1 keep-alive client for load generators: ~0.1 ms of CPU a request where httpx's AsyncClient
took ~7 ms (measured in `./bench/run burst`: 11.5 s of CPU for 1,600 posts), so the client, not leadsync, was
what a burst measured. Only what the benchmarks need: POST with a body, answers with Content-Length.

Example:
    client = RawClient("http://127.0.0.1:8000", connections=64)
    status, headers = await client.post("/forms/newsletter", b'{"email": "a@example.org"}', {"Idempotency-Key": "k"})
    await client.close()
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class RawClient:
    """At most `connections` open connections, reused; a request waits for a free one."""

    def __init__(self, url: str, connections: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()
        for _ in range(connections):
            self._free.put_nowait(None)  # a slot whose connection is opened on first use
        self._open: set[asyncio.StreamWriter] = set()

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        """POST `body` as JSON; the status and the answer's headers (lowercased names). Raises OSError when the
        connection fails (the slot is then reopened on its next use)."""
        slot = await self._free.get()
        try:
            if slot is None:
                slot = await asyncio.open_connection(self.host, self.port)
                self._open.add(slot[1])
            reader, writer = slot
            lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Content-Type: application/json"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            lines.append(f"Content-Length: {len(body)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionResetError("the server closed the connection")
            status = int(status_line.split()[1])
            answer: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                answer[name.strip().lower()] = value.strip()
            await reader.readexactly(int(answer.get("content-length", "0")))
            if answer.get("connection", "").lower() == "close":
                self._drop(slot)
                slot = None
            return status, answer
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
            if slot is not None:
                self._drop(slot)
            slot = None
            raise OSError(f"request failed: {error!r}") from error
        finally:
            self._free.put_nowait(slot)

    def _drop(self, slot: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self._open.discard(slot[1])
        slot[1].close()

    async def close(self) -> None:
        for writer in list(self._open):
            writer.close()
        self._open.clear()
