"""uvicorn's worker processes, each listening on its own SO_REUSEPORT socket, so that Linux spreads the
connections over them evenly.

Why: with uvicorn's own `--workers`, every process accepts from one shared socket, and the first one awake
takes a whole burst. 64 keep-alive connections opened at once split 44/20 (measured with `./bench/run intake`),
and the process holding 44 answered each post about twice as late as the other: the p99 was that process's.
A reverse proxy's upstream keep-alive pool is the same pattern: a few long-lived connections carry all the
traffic. With a socket of its own in one SO_REUSEPORT group, each process gets the connections Linux assigns
to it by a hash of their addresses: 32 ± 4 of 64.

Everything else is uvicorn's supervisor, unchanged: worker restarts, health pings, signals.

Example:
    >>> serve(uvicorn.Config("leadsync.forms.app:create_app", factory=True, port=8000, workers=2))
"""

from __future__ import annotations

import socket

from uvicorn import Config
from uvicorn.supervisors import multiprocess


def listen(config: Config) -> socket.socket:
    """A listening socket of this process's own, in the SO_REUSEPORT group of config.host:config.port."""
    sock = socket.socket(_family(config), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((config.host, config.port))
    sock.listen(config.backlog)
    return sock


def refuse_if_taken(config: Config) -> None:
    """SystemExit when something listens on config.host:config.port already.

    Why: SO_REUSEPORT would let this start join an old `leadsync web` still running there (after a careless
    redeploy) and share the visitors with it, silently. A plain bind, without SO_REUSEPORT, conflicts with any
    listener, ours included, so the port is checked that way before the workers start, as uvicorn's own bind
    refuses a taken port.
    """
    with socket.socket(_family(config), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT are no listener
        try:
            probe.bind((config.host, config.port))
        except OSError as error:
            raise SystemExit(f"leadsync web: cannot listen on {config.host}:{config.port}: {error.strerror}") from None


def _family(config: Config) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in config.host else socket.AF_INET


class ReusePortProcess(multiprocess.Process):
    """A uvicorn worker process that serves on a socket it binds itself (in the child, after the spawn)."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover (the child)
        super().target([listen(self.config)])


def serve(config: Config) -> None:
    """Run config.workers processes under uvicorn's supervisor, each with its own socket.

    The supervisor builds its workers through the module's `Process` name (at start, on a restart, on
    SIGTTIN); pointing it at ReusePortProcess is the whole change. This process (`leadsync web`) only
    supervises, so the name is changed nowhere else.
    """
    refuse_if_taken(config)
    multiprocess.Process = ReusePortProcess  # type: ignore[misc]
    multiprocess.Multiprocess(config, sockets=[]).run()
