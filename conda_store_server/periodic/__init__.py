"""Work that runs on a schedule, once per deployment whatever the number of workers."""

from __future__ import annotations

import datetime
from typing import NamedTuple

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conda_store_server.db.models import PeriodicTask, utcnow


class Claim(NamedTuple):
    claimed: bool  # this caller runs the task now
    next_run_at: datetime.datetime  # when the task is next due (UTC), whoever claimed it


def claim_run(session: Session, name: str, every_seconds: float) -> Claim:
    """Claimed for exactly one caller per period, across processes and machines.

    The database decides: the first worker whose conditional update moves `next_run_at` past
    now runs the task; the others see no row to update, and learn when it is next due. The row
    is created on first use.
    """
    now = utcnow()
    following = now + datetime.timedelta(seconds=every_seconds)
    if _advance(session, name, now, following):
        return Claim(True, following)
    upcoming = _next_run_at(session, name)
    if upcoming is not None:
        return Claim(False, upcoming)
    try:
        with session.begin_nested():
            session.execute(insert(PeriodicTask).values(name=name, next_run_at=now))
    except IntegrityError:
        pass  # another worker created it at the same moment; the update below decides
    if _advance(session, name, now, following):
        return Claim(True, following)
    return Claim(False, _next_run_at(session, name) or following)


def _next_run_at(session: Session, name: str) -> datetime.datetime | None:
    return session.scalar(select(PeriodicTask.next_run_at).where(PeriodicTask.name == name))


def _advance(session: Session, name: str, now: datetime.datetime, following: datetime.datetime) -> bool:
    claimed = session.execute(
        update(PeriodicTask)
        .where(PeriodicTask.name == name, PeriodicTask.next_run_at <= now)
        .values(next_run_at=following)
        .execution_options(synchronize_session=False)
    ).rowcount
    return claimed == 1
