"""Writing submissions on the request path: idempotent by key, many in one transaction.

`store_submissions` is the group commit: the web process hands it every submission that arrived
while the previous transaction was committing (forms/group_commit.py), so the cost of a commit is
shared by all of them. `store_submission` is the one-at-a-time form, and the fallback when two
processes race on an Idempotency-Key.

Spam (a honeypot, a bad render-time token, a post over the rate limits) is counted, not stored whole:
each one bumps its (day, form, reason) row in `spam_counts`, and only the first SPAM_SAMPLE_PER_DAY of
each are kept as `submissions` rows, every text cut to SAMPLE_TEXT characters, for operations to look
at. 100,000 honeypot posts from one address add well under 10 MB (measured in
tests/security/test_red_team_privacy.py); before, each added a full row, up to ~24 KB.

Example:
    >>> outcome = store_submission(session, NewSubmission(form="newsletter", email="a@b.org", ...))
    >>> outcome.created, outcome.submission_id
    (True, '3f2a...')
    >>> [o.created for o in store_submissions(session, [first, first_again_with_same_key])]
    [True, False]
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import TextClause, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from leadsync.storage.models import SpamCount, Submission, SubmissionStatus, new_id, utcnow

log = logging.getLogger(__name__)
SPAM_SAMPLE_PER_DAY = 20  # spam rows kept whole-ish per day, form and reason: enough to see what a bot sends
PRIMARY_KEY = "submissions_pkey"  # PostgreSQL's name for it (no name is given in the migrations)
SAMPLE_TEXT = 200  # characters of each text kept in a sample row (a row stays under ~3 KB)


@dataclass(frozen=True)
class NewSubmission:
    """What the HTTP edge hands to storage: validated values plus request metadata."""

    form: str
    email: str
    fields: dict[str, Any]
    raw: dict[str, Any]
    ip: str | None = None
    user_agent: str | None = None
    page_url: str | None = None
    utm: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    spam: bool = False
    spam_reason: str | None = None  # why it is spam (forms/spam.py); set means spam
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True)
class StoreOutcome:
    submission_id: str
    created: bool  # False: the Idempotency-Key was seen before; `submission_id` is the first one's
    key_conflict: bool = False  # the key was seen before with a different request
    counted_only: bool = False  # spam beyond the day's sample: counted in spam_counts, no row (the id is fresh)


def store_submission(session: Session, new: NewSubmission) -> StoreOutcome:
    """Insert `new` and commit; an Idempotency-Key seen before returns the original instead."""
    return store_submissions(session, [new])[0]


def store_submissions(session: Session, batch: Sequence[NewSubmission]) -> list[StoreOutcome]:
    """Insert the whole batch in one transaction, with one multi-row INSERT; outcomes in the batch's order.

    A key already stored, or repeated within the batch, replays the first submission with it. When
    another process stores the same key at the same moment, the unique index refuses the batch and
    each submission is stored on its own instead (rare, and still correct).
    """
    keys = {new.idempotency_key for new in batch if new.idempotency_key}
    known: dict[str, _Keyed] = {}
    if keys:
        stored = session.execute(
            select(Submission.id, Submission.form, Submission.request_hash, Submission.idempotency_key).where(
                Submission.idempotency_key.in_(keys)
            )
        )
        known = {key: _Keyed(id_, form, hash_) for id_, form, hash_, key in stored}
    outcomes: list[StoreOutcome] = []
    rows: list[dict[str, Any]] = []
    spam: list[tuple[int, NewSubmission]] = []
    for new in batch:
        first = known.get(new.idempotency_key) if new.idempotency_key else None
        if first is not None:
            outcomes.append(_replay(first, new))
            continue
        if new.spam or new.spam_reason:
            spam.append((len(outcomes), new))
            outcomes.append(StoreOutcome(new_id(), created=True, counted_only=True))
            continue
        row = _values(new)
        if new.idempotency_key:
            known[new.idempotency_key] = _Keyed(row["id"], new.form, new.request_hash)
        rows.append(row)
        outcomes.append(StoreOutcome(row["id"], created=True))
    # A batch of new leads and nothing else is one statement: run alone (autocommit) it is as atomic as a
    # transaction and saves the BEGIN and COMMIT round trips (under wrk -c64: ~2,000 -> ~2,300 req/s,
    # docs/benchmarks.md "Sixth round").
    alone = not keys and not spam and not session.in_transaction()
    try:
        if spam:
            for index, row in _count_spam(session, spam):
                rows.append(row)
                outcomes[index] = StoreOutcome(row["id"], created=True)
                if row["idempotency_key"]:
                    known[row["idempotency_key"]] = _Keyed(row["id"], row["form"], row["request_hash"])
        if rows:
            _insert(session, rows, alone)
        session.commit()
    except IntegrityError:
        session.rollback()
        if not keys:
            raise
        if len(batch) > 1:  # find the one that raced, each on its own
            return [store_submission(session, new) for new in batch]
        # Alone: another process stored the same key at the same moment; the unique index let that one in.
        key = batch[0].idempotency_key
        assert key is not None
        return [_replay(_first_with_key(session, key), batch[0])]
    except DBAPIError as error:
        session.rollback()
        if not (alone and error.connection_invalidated):
            raise
        _insert_again(session, rows)
    return outcomes


def _insert_again(session: Session, rows: list[dict[str, Any]]) -> None:
    """A batch of new leads whose one statement lost its connection, sent once more over a new one.

    Its rows keep their ids, so whether the first one landed (committed before the answer was lost) is
    read from the primary key: taken means stored, and the batch is not stored twice.
    """
    try:
        _insert(session, rows, alone=True)
        session.commit()
    except IntegrityError as error:
        session.rollback()
        if getattr(getattr(error.orig, "diag", None), "constraint_name", None) != PRIMARY_KEY:
            raise
        log.info("a batch of %d lead(s) had landed before its connection was lost", len(rows))


def _insert(session: Session, rows: list[dict[str, Any]], alone: bool = False) -> None:
    """One INSERT for the batch. On PostgreSQL the rows travel as one JSON document that the server unpacks
    (json_populate_recordset): one statement and one parameter, where executemany sends a statement per row
    and converts four JSON columns a row in Python; half the writer's CPU a post (docs/benchmarks.md).
    Elsewhere (SQLite), Core's executemany; Core, not ORM objects, either way: building and flushing those was
    a third of the request path's CPU."""
    if session.get_bind().dialect.name == "postgresql":
        if alone:
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        session.execute(_populate(tuple(rows[0])), {"rows": json.dumps(rows, default=_json_value)})
    else:
        session.execute(insert(Submission.__table__), rows)


@lru_cache(maxsize=4)
def _populate(columns: tuple[str, ...]) -> TextClause:
    """INSERT ... SELECT from the rows' JSON, for the columns `_values` fills (every row has the same keys)."""
    names = ", ".join(Submission.__table__.c[name].name for name in columns)  # KeyError on a stray key
    source = "json_populate_recordset(NULL::submissions, :rows)"
    return text(f"INSERT INTO submissions ({names}) SELECT {names} FROM {source}")


def _json_value(value: Any) -> str:
    if isinstance(value, datetime):  # received_at: ISO 8601 with its offset, which timestamptz reads exactly
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} in a submission row")


def _count_spam(session: Session, spam: list[tuple[int, NewSubmission]]) -> list[tuple[int, dict[str, Any]]]:
    """Count the batch's spam in `spam_counts` (one upsert a day, form and reason) and return the sample
    rows to store: (index in the batch, row) for those still within the day's SPAM_SAMPLE_PER_DAY."""
    today = utcnow().date()
    tally = Counter((new.form, _reason(new)) for _, new in spam)
    room: dict[tuple[str, str], int] = {}
    for (form, reason), n in tally.items():
        total = _bump(session, today, form, reason, n)
        room[(form, reason)] = max(0, SPAM_SAMPLE_PER_DAY - (total - n))
    sample = []
    for index, new in spam:
        key = (new.form, _reason(new))
        if room[key] > 0:
            room[key] -= 1
            sample.append((index, _values(_cut(new))))
    return sample


def _bump(session: Session, day: date, form: str, reason: str, n: int) -> int:
    """Add `n` to a counter in one statement (an upsert, safe with other web processes); returns the total."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(SpamCount).values(day=day, form=form, reason=reason, count=n)
    statement = statement.on_conflict_do_update(
        index_elements=["day", "form", "reason"], set_={"count": SpamCount.count + statement.excluded.count}
    )
    return int(session.execute(statement.returning(SpamCount.count)).scalar_one())


def _reason(new: NewSubmission) -> str:
    return new.spam_reason or "honeypot"


def _short(value: Any) -> Any:
    if isinstance(value, str):
        return value[:SAMPLE_TEXT]
    if isinstance(value, dict):
        return {str(key)[:SAMPLE_TEXT]: _short(item) for key, item in list(value.items())[:40]}
    if isinstance(value, list):
        return [_short(item) for item in value[:40]]
    return value


def _cut(new: NewSubmission) -> NewSubmission:
    """A spam sample: every text cut to SAMPLE_TEXT characters (a bot's 20 KB message is not kept)."""
    return NewSubmission(
        form=new.form,
        email=new.email,
        fields=_short(new.fields),
        raw=_short(new.raw),
        ip=new.ip,
        user_agent=_short(new.user_agent),
        page_url=_short(new.page_url),
        utm=_short(new.utm),
        consent=_short(new.consent),
        spam=new.spam,
        spam_reason=new.spam_reason,
        idempotency_key=new.idempotency_key,
        request_hash=new.request_hash,
    )


@dataclass(frozen=True)
class _Keyed:
    """The first submission stored with an Idempotency-Key: what a replay is compared with."""

    id: str
    form: str
    request_hash: str | None


def _values(new: NewSubmission) -> dict[str, Any]:
    return {
        "id": new_id(),
        "received_at": utcnow(),
        "form": new.form,
        "email": new.email,
        "fields": new.fields,
        "raw": new.raw,
        "ip": new.ip,
        "user_agent": new.user_agent,
        "page_url": new.page_url,
        "utm": new.utm,
        "consent": new.consent,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash,
        "status": SubmissionStatus.SPAM if new.spam or new.spam_reason else SubmissionStatus.PENDING,
        "spam_reason": new.spam_reason or ("honeypot" if new.spam else None),
    }


def _first_with_key(session: Session, key: str) -> _Keyed:
    id_, form, request_hash = session.execute(
        select(Submission.id, Submission.form, Submission.request_hash).where(Submission.idempotency_key == key)
    ).one()
    return _Keyed(id_, form, request_hash)


def _replay(first: _Keyed, new: NewSubmission) -> StoreOutcome:
    same = first.form == new.form and first.request_hash == new.request_hash
    return StoreOutcome(first.id, created=False, key_conflict=not same)
