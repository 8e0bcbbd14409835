"""Work that runs on a schedule, once per deployment whatever the number of workers."""

from __future__ import annotations

import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conda_store_server.db.models import PeriodicTask, utcnow


def claim_run(session: Session, name: str, every_seconds: float) -> bool:
    """True for exactly one caller per period, across processes and machines.

    The database decides: the first worker whose conditional update moves `next_run_at` past
    now runs the task; the others see no row to update. The row is created on first use.
    """
    now = utcnow()
    if _advance(session, name, now, every_seconds):
        return True
    if next_run_at(session, name) is not None:
        return False
    try:
        with session.begin_nested():
            session.execute(insert(PeriodicTask).values(name=name, next_run_at=now))
    except IntegrityError:
        pass  # another worker created it at the same moment; the update below decides
    return _advance(session, name, now, every_seconds)


def next_run_at(session: Session, name: str) -> datetime.datetime | None:
    """When the task is next due (UTC), or None before its first claim."""
    return session.scalar(select(PeriodicTask.next_run_at).where(PeriodicTask.name == name))


def _advance(session: Session, name: str, now: datetime.datetime, every_seconds: float) -> bool:
    claimed = session.execute(
        update(PeriodicTask)
        .where(PeriodicTask.name == name, PeriodicTask.next_run_at <= now)
        .values(next_run_at=now + datetime.timedelta(seconds=every_seconds))
        .execution_options(synchronize_session=False)
    ).rowcount
    return claimed == 1
