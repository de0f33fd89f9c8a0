"""The group-commit writer's CPU a post by batch size: what forms/group_commit.py's LINGER_SECONDS is for.

Runs the web's writer step (`GroupCommit._commit_and_publish`: the rate-limit script on Redis, one INSERT and
COMMIT on a durable PostgreSQL, one Celery publish) in this process, on batches of 1 to 64 info-packet posts,
and prints the CPU a post (process time) for each size. A batch has a fixed cost, so bigger batches cost less a
post; the check is that the fixed cost is still there (a batch of 32 costs at most 3/4 of a batch of 16 a
post), since the linger is only worth its 2 ms while it is.

Example:
    ./bench/run group_commit --batches 300 --json /tmp/group_commit.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench.processes import print_verdicts, start_services

SIZES = (1, 4, 8, 16, 32, 64)


def _posts(size: int, tag: str) -> list:
    from leadsync.storage.submissions import NewSubmission

    fields = {"first_name": "Ann", "last_name": "Lee", "phone": "+1 415 555 2671", "interest": "knee pain"}
    return [
        NewSubmission(
            form="info_packet",
            email=f"lead-{tag}-{i}@example.org",
            fields={**fields, "newsletter_opt_in": False},
            raw={**fields, "email": f"lead-{tag}-{i}@example.org", "website": ""},
            ip="127.0.0.1",
            user_agent="bench",
            utm={},
            consent={"newsletter": False, "ip": "127.0.0.1"},
        )
        for i in range(size)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300, help="batches measured a size (after 50 warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="the sizes take turns this many times; medians")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args()

    with start_services() as services:
        os.environ.update(services.leadsync_env(services.database("leadsync")))
        from leadsync import logs
        from leadsync.config import get_settings
        from leadsync.forms.group_commit import GroupCommit
        from leadsync.forms.spam import SpamGuard
        from leadsync.forms.submit import store_batch
        from leadsync.storage.migrate import upgrade
        from leadsync.worker.celery_app import reconfigure
        from leadsync.worker.enqueue import enqueue_submissions

        logs.configure("console", "WARNING")  # not a "stored 16 submission(s)" line a batch
        settings = get_settings()
        reconfigure(settings)
        upgrade()
        writer = GroupCommit(store_batch, enqueue_submissions, count=SpamGuard(settings).count)
        measured: dict[int, list[float]] = {size: [] for size in SIZES}
        for round_ in range(args.rounds):
            for size in SIZES:
                batches = [_posts(size, f"{round_}-{size}-{n}") for n in range(args.batches + 50)]
                for batch in batches[:50]:
                    writer._commit_and_publish(batch)
                started = time.process_time()
                for batch in batches[50:]:
                    writer._commit_and_publish(batch)
                measured[size].append((time.process_time() - started) / (args.batches * size) * 1e6)

    per_post = {size: round(statistics.median(values), 1) for size, values in measured.items()}
    figures = {
        "cpu_us_a_post_by_batch_size": per_post,
        "rounds": {k: [round(v, 1) for v in vs] for k, vs in measured.items()},
    }
    checks = [
        (
            per_post[32] <= 0.75 * per_post[16],
            f"a batch of 32 costs {per_post[32]} us a post, a batch of 16 {per_post[16]} (at most 3/4: the fixed cost"
            " a batch the linger saves)",
        )
    ]
    return 0 if print_verdicts(figures, checks, args.json) else 1


if __name__ == "__main__":
    raise SystemExit(main())
