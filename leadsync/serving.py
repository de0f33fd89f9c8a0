"""Running the HTTP server and the processes `leadsync dev` starts: uvicorn's proxy options, clean stops.

Example:
    >>> from leadsync.config import Settings
    >>> proxy_options(Settings(_env_file=None, forwarded_allow_ips="10.0.0.0/8"))
    {'proxy_headers': True, 'forwarded_allow_ips': '10.0.0.0/8'}
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

from leadsync.config import Settings

# A Celery warm shutdown waits for running tasks (an SMTP send times out after SMTP_TIMEOUT, 15 s): 7 s, then
# SIGKILL, keeps `leadsync dev` inside the 10 s a process manager waits before killing it.
DEV_STOP_GRACE_SECONDS = 7.0


def exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM `process`'s group, wait `grace` seconds, then SIGKILL whatever of the group is left."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # pool children and beat too, should the main one be gone
    process.wait()


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn believes X-Forwarded-For / -Proto only from FORWARDED_ALLOW_IPS, so request.client is the
    visitor's address behind a trusted proxy, and a direct client cannot claim another one."""
    return {"proxy_headers": True, "forwarded_allow_ips": settings.forwarded_allow_ips}
