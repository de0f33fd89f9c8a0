"""The usual stack: FastAPI, a sync endpoint, one SQLAlchemy INSERT + COMMIT and one Celery apply_async per post.

What a tutorial builds for "store the lead, then process it in the background", written fairly: a form
model with EmailStr validation, a session per request from a pooled engine (20 + 10 connections per
process: more than the 64 benchmark connections need across 2 workers, within PostgreSQL's 100), the
Celery producer pool of the Redis broker. The table is created at start-up (under an advisory lock, since
both uvicorn workers start at once). No Celery worker is needed to measure intake: tasks wait in Redis.

    USUAL_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/usual \\
    USUAL_BROKER_URL=redis://127.0.0.1:6379/1 \\
    .venv/bin/uvicorn bench.references.usual_stack:app --workers 2 --loop uvloop --http httptools
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from celery import Celery
from fastapi import Depends, FastAPI, Form
from pydantic import BaseModel, EmailStr, Field
from sqlalchemy import DateTime, String, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DATABASE_URL = os.environ.get("USUAL_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/usual")
BROKER_URL = os.environ.get("USUAL_BROKER_URL", "redis://127.0.0.1:6379/1")

engine = create_engine(DATABASE_URL, pool_size=20, max_overflow=10)
SessionLocal = sessionmaker(bind=engine, expire_on_commit=False)

celery = Celery("usual_stack", broker=BROKER_URL)
celery.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)


@celery.task(name="usual_stack.process_lead")
def process_lead(lead_id: int) -> None:
    """The background work (email, CRM); never run here: the benchmark measures intake."""


class Base(DeclarativeBase):
    pass


class Lead(Base):
    __tablename__ = "leads"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    phone: Mapped[str | None] = mapped_column(String(40))
    interest: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=lambda: datetime.now(UTC))


class InfoPacketForm(BaseModel):
    email: EmailStr
    first_name: str = Field(min_length=1, max_length=100)
    last_name: str | None = Field(None, max_length=100)
    phone: str | None = Field(None, max_length=40)
    interest: str | None = Field(None, max_length=200)
    website: str | None = None  # honeypot


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(7301)"))  # the other worker waits, then sees it
        Base.metadata.create_all(connection)
    yield
    engine.dispose()


app = FastAPI(lifespan=lifespan)


def get_db() -> Iterator[Session]:
    with SessionLocal() as session:
        yield session


@app.post("/forms/info-packet", status_code=202)
def info_packet(form: Annotated[InfoPacketForm, Form()], db: Annotated[Session, Depends(get_db)]) -> dict[str, object]:
    lead = Lead(
        email=form.email.lower(),
        first_name=form.first_name,
        last_name=form.last_name,
        phone=form.phone,
        interest=form.interest,
    )
    db.add(lead)
    db.commit()
    process_lead.apply_async(args=[lead.id])
    return {"status": "accepted", "id": lead.id}
