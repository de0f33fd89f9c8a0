"""What `store_submissions` writes, column by column: on PostgreSQL a batch travels as one JSON document
(json_populate_recordset), and must land exactly as Core's executemany would write the same rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Text, cast, insert, select
from sqlalchemy.orm import Session

from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker
from leadsync.storage.models import Submission
from leadsync.storage.submissions import NewSubmission, _insert, _values, store_submissions

AWKWARD = 'Zoë "Z" O\'Brien \\ 東京 🙂 \u00e9 <b>&amp;</b>'
COLUMNS = [column for column in Submission.__table__.columns]


def awkward(index: int, **extra: Any) -> NewSubmission:
    return NewSubmission(
        form="info_packet",
        email=f"zoë.{index}@bücher.example",
        fields={"first_name": AWKWARD, "newsletter_opt_in": True, "n": index, "x": None, "f": 0.1},
        raw={"first_name": AWKWARD, "list_like": "[1, 2]", "empty": "", "flag": False},
        ip="2001:db8::1",
        user_agent=AWKWARD,
        page_url="https://clinic.example/blog/knee?a=1&b=%20",
        utm={"utm_source": "news", "utm_campaign": "dec 2026"},
        consent={"newsletter": True, "text_version": "2026-11", "ip": None},
        **extra,
    )


def as_text(session: Session, submission_id: str) -> dict[str, Any]:
    """Every column as the database holds it, cast to text (the JSON columns' exact text included)."""
    row = session.execute(
        select(*(cast(column, Text) for column in COLUMNS)).where(Submission.id == submission_id)
    ).one()
    return dict(zip([column.name for column in COLUMNS], row, strict=True))


def test_a_batch_lands_column_for_column_as_executemany_writes_it(settings: Settings) -> None:
    rows = [_values(awkward(index)) for index in range(3)]
    rows[1] |= {
        "idempotency_key": "key-1",
        "request_hash": "h" * 64,
        "received_at": datetime(2026, 12, 1, 9, 12, 3, 4560, UTC),
    }
    # The same rows written the plain way (Core executemany), under other ids.
    reference = [{**row, "id": f"ref{row['id'][3:]}", "idempotency_key": None} for row in rows]
    with get_sessionmaker()() as session:
        _insert(session, rows)
        session.execute(insert(Submission.__table__), reference)
        session.commit()
        for row, plain in zip(rows, reference, strict=True):
            stored, expected = as_text(session, row["id"]), as_text(session, plain["id"])
            assert stored.pop("idempotency_key") == row["idempotency_key"] and expected.pop("idempotency_key") is None
            assert stored.pop("id") == row["id"] and expected.pop("id") == plain["id"]
            assert stored == expected  # the JSON columns' text too: erasure searches it (worker/privacy.py)


def test_store_submissions_reads_back_what_it_was_given(settings: Settings) -> None:
    batch = [awkward(0), awkward(1, idempotency_key="key-1", request_hash="h" * 64), awkward(2, spam_reason="honeypot")]
    with get_sessionmaker()() as session:
        outcomes = store_submissions(session, batch)
        stored = {row.id: row for row in session.scalars(select(Submission))}
    assert [o.created for o in outcomes] == [True, True, True]
    for new, outcome in zip(batch, outcomes, strict=True):
        row = stored[outcome.submission_id]
        assert (row.email, row.fields, row.raw, row.utm, row.consent) == (
            new.email, new.fields, new.raw, new.utm, new.consent
        )  # fmt: skip
        assert (row.user_agent, row.page_url, row.ip) == (AWKWARD, new.page_url, new.ip)
        assert (row.status, row.spam_reason) == (("spam", "honeypot") if new.spam_reason else ("pending", None))
        assert row.idempotency_key == new.idempotency_key and row.request_hash == new.request_hash
        assert abs(row.received_at - datetime.now(UTC)).total_seconds() < 60 and row.received_at.tzinfo is not None
