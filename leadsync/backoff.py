"""The one backoff: exponential, capped, with jitter so that retries from many workers spread out.

Attempt 1 waits up to `base`, each further attempt doubles the ceiling up to `cap`. `jittered` draws
uniformly between a floor and that ceiling: half the ceiling by default ("equal jitter": never hammers
sooner than half the ceiling), or a fixed floor (e.g. base / 2: the full spread). `ceiling` alone is the
deterministic schedule (e.g. the HubSpot erasure job's next try).

Example:
    >>> ceiling(1, base=5.0, cap=300.0), ceiling(4, base=5.0, cap=300.0), ceiling(20, base=5.0, cap=300.0)
    (5.0, 40.0, 300.0)
    >>> 20.0 <= jittered(4, base=5.0, cap=300.0) <= 40.0
    True
"""

from __future__ import annotations

import random


def ceiling(attempt: int, base: float, cap: float) -> float:
    """The longest wait before attempt `attempt + 1` (1-based): base, 2 base, 4 base ... at most cap."""
    return min(cap, base * 2 ** (attempt - 1))


def jittered(attempt: int, base: float, cap: float, floor: float | None = None) -> float:
    """A wait drawn uniformly from [floor, ceiling]; the floor is half the ceiling unless given."""
    top = ceiling(attempt, base, cap)
    return random.uniform(top / 2 if floor is None else floor, top)
