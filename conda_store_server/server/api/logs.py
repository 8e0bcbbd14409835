"""Build logs for readers: the whole log as text, and a Server-Sent Events stream that follows it.

The stream's contract (pages are written against it): each log line is one event whose `id` is
the byte offset just after the line and whose `data` is the line without its newline; a
`Last-Event-ID` header (what a browser's EventSource sends when it reconnects) or `?offset=N`
resumes from that byte offset; a `: keepalive` comment goes out every KEEPALIVE_SECONDS; once the
build is final and its whole log is sent, one `end` event carries `{"status", "status_info"}` and
the response ends. Storage and database reads run in the thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from conda_store_server import service
from conda_store_server.app import CondaStore
from conda_store_server.db.models import Build, BuildArtifactType, BuildStatus, utcnow
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import (
    BuildId,
    Caller,
    CallerDependency,
    SessionDependency,
    StoreDependency,
)

__all__ = ["KEEPALIVE_SECONDS", "POLL_SECONDS", "log_response", "router"]

router = APIRouter(prefix="/api/v1")

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
# A final build's log is sealed by its worker moments after the status changes (a COMPLETED
# build first stores its artifacts). A log that is still unsealed this long after the build ended
# will not be (its worker died in between, or it predates sealing): it is complete as it is.
UNSEALED_GRACE_SECONDS = 120.0
MEDIA_TYPE = "text/plain; charset=utf-8"


def log_response(conda_store: CondaStore, key: str) -> Response:
    """A log as `/logs/` serves it: a sealed (complete) log as any artifact (redirect to the
    storage URL, or the file), a growing one as the text written so far."""
    storage = conda_store.storage
    chunk = storage.read_log(key, 0) if not storage.log_is_sealed(key) else None
    if chunk is None:
        url = storage.get_url(key)
        if url is not None:
            return RedirectResponse(url, status_code=307)
        path = storage.local_path(key)
        if path is not None and path.is_file():
            return FileResponse(path, media_type=MEDIA_TYPE, filename=path.name)
        chunk = storage.read_log(key, 0)
    return PlainTextResponse(chunk.data, media_type=MEDIA_TYPE)


@dataclass(frozen=True)
class BuildState:
    status: BuildStatus
    status_info: str | None
    started_on: datetime.datetime | None
    ended_on: datetime.datetime | None

    def log_is_complete(self, sealed: bool) -> bool:
        """True when nothing more will be appended to the build's log."""
        if not self.status.is_final:
            return False
        if sealed or self.started_on is None:  # never run since it was queued: no process writes
            return True
        ended = self.ended_on or utcnow()
        return (utcnow() - ended).total_seconds() > UNSEALED_GRACE_SECONDS


def _authorized_log_key(session: Session, caller: Caller, build_id: int) -> str:
    """As `/logs/`: the build first (404), then read permission on its environment (403)."""
    build = service.get_build(session, build_id)
    environment = build.environment
    caller.require(f"{environment.namespace.name}/{environment.name}", Permissions.ENVIRONMENT_READ)
    artifact = next((a for a in build.build_artifacts if a.artifact_type == BuildArtifactType.LOGS), None)
    if artifact is None:
        raise HTTPException(404, f"build {build_id} has no {BuildArtifactType.LOGS.value} artifact")
    return artifact.key


def _build_state(conda_store: CondaStore, build_id: int) -> BuildState:
    with conda_store.session() as session:
        build = session.get(Build, build_id)
        if build is None:  # deleted from the database while followed
            return BuildState(BuildStatus.CANCELED, f"build {build_id} no longer exists", None, None)
        return BuildState(build.status, build.status_info, build.started_on, build.ended_on)


def _start_offset(last_event_id: str | None, offset: int | None) -> int:
    if last_event_id is None or not last_event_id.strip():
        return offset or 0
    text = last_event_id.strip()
    if not text.isdigit() or len(text) > 18:
        raise HTTPException(400, f"Last-Event-ID must be a byte offset (a non-negative integer): {text!r}")
    return int(text)


def _event(offset: int, line: bytes) -> str:
    # a line holds no newline; a carriage return would end an SSE field early
    text = line.decode("utf-8", errors="replace").replace("\r", " ")
    return f"id: {offset}\ndata: {text}\n\n"


async def _follow(
    request: Request, conda_store: CondaStore, build_id: int, key: str, offset: int
) -> AsyncIterator[str]:
    """The events of the log from `offset`, polled every POLL_SECONDS until the log is complete."""
    storage = conda_store.storage
    next_keepalive = time.monotonic() + KEEPALIVE_SECONDS
    while True:
        # the state first: a log read after it holds every line written before it
        state = await run_in_threadpool(_build_state, conda_store, build_id)
        chunk = await run_in_threadpool(storage.read_log, key, offset)
        complete = state.log_is_complete(chunk.sealed)
        data = chunk.data
        if complete and data and not data.endswith(b"\n"):
            data += b"\n"  # a last line without its newline is still a line
        end = data.rfind(b"\n") + 1
        events = []
        for line in data[:end].split(b"\n")[:-1]:
            offset += len(line) + 1
            events.append(_event(offset, line))
        if events:
            yield "".join(events)
        if complete:
            info = {"status": state.status.value, "status_info": state.status_info}
            yield f"event: end\ndata: {json.dumps(info)}\n\n"
            return
        if time.monotonic() >= next_keepalive:
            next_keepalive = time.monotonic() + KEEPALIVE_SECONDS
            yield ": keepalive\n\n"
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_SECONDS)


@router.get("/build/{build_id}/logs/stream", response_class=StreamingResponse)
async def api_build_log_stream(
    build_id: BuildId,
    request: Request,
    offset: int | None = Query(None, ge=0, le=2**62, description="Byte offset to resume from"),
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> StreamingResponse:
    """The build's log as Server-Sent Events, from `offset` (or `Last-Event-ID`) to its end."""
    start = _start_offset(request.headers.get("last-event-id"), offset)
    key = await run_in_threadpool(_authorized_log_key, session, caller, build_id)
    return StreamingResponse(
        _follow(request, conda_store, build_id, key, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
