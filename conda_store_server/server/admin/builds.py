"""The build page (status and log followed live, packages, artifacts) and a build's actions
(rebuild, cancel, delete), each through the API handler that does the same."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from conda_store_server import service
from conda_store_server.app import CondaStore
from conda_store_server.db.models import (
    BuildStatus,
    CondaChannel,
    CondaPackage,
    CondaPackageBuild,
    build_conda_package_build,
)
from conda_store_server.server.admin.access import FormCaller, SignedIn
from conda_store_server.server.admin.artifacts import artifact_links
from conda_store_server.server.admin.environments import specification_text
from conda_store_server.server.admin.rendering import page_url, prefix_of, render
from conda_store_server.server.admin.route import AdminRoute
from conda_store_server.server.api import v1
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import BuildId, Caller, SessionDependency, StoreDependency

router = APIRouter(route_class=AdminRoute, include_in_schema=False)


def build_packages(session: Session, build_id: int) -> list[dict[str, str]]:
    """The conda packages installed by the build (what GET /api/v1/build/{id}/packages/ lists)."""
    rows = session.execute(
        select(CondaPackage.name, CondaPackage.version, CondaPackageBuild.build, CondaChannel.name)
        .join(CondaPackageBuild, CondaPackageBuild.package_id == CondaPackage.id)
        .join(
            build_conda_package_build,
            build_conda_package_build.c.conda_package_build_id == CondaPackageBuild.id,
        )
        .join(CondaChannel, CondaChannel.id == CondaPackage.channel_id)
        .where(build_conda_package_build.c.build_id == build_id)
        .order_by(CondaPackage.name, CondaPackage.version)
    )
    return [
        {"name": name, "version": version, "build": build, "channel": channel}
        for name, version, build, channel in rows
    ]


@router.get("/admin/build/{build_id}/")
def build_page(
    request: Request,
    build_id: BuildId,
    caller: Caller = SignedIn,
    session: Session = SessionDependency,
) -> Response:
    """As GET /api/v1/build/{id}/: the build is looked up (404), then authorized (403)."""
    build = service.get_build(session, build_id)
    arn = v1.environment_arn(build)
    caller.require(arn, Permissions.ENVIRONMENT_READ)
    environment = build.environment
    prefix = prefix_of(request)
    context = {
        "title": f"Build {build.id}",
        "build": build,
        "environment": environment,
        "namespace": environment.namespace.name,
        "is_current": environment.current_build_id == build.id,
        "final": build.status.is_final,
        "specification": specification_text(build.specification.spec),
        "lockfile": build.specification.is_lockfile,
        "packages": build_packages(session, build.id),
        "links": artifact_links(prefix, build),
        "api": f"{prefix}/api/v1/build/{build.id}/",
        "can_update": caller.can(arn, Permissions.ENVIRONMENT_UPDATE),
        "can_cancel": caller.can(arn, Permissions.BUILD_CANCEL),
        "can_delete": caller.can(arn, Permissions.BUILD_DELETE),
        "active": build.status in (BuildStatus.QUEUED, BuildStatus.BUILDING),
    }
    return render(request, caller, "build.html", context)


@router.post("/admin/build/{build_id}/rebuild/")
def rebuild(
    request: Request,
    build_id: BuildId,
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    """A new build of the same specification, as PUT /api/v1/build/{id}/; then its page."""
    answer = v1.api_rebuild(build_id, caller=caller, session=session, conda_store=conda_store)
    return RedirectResponse(page_url(request, "build", answer["data"]["build_id"]), status_code=303)


@router.post("/admin/build/{build_id}/cancel/")
def cancel(
    request: Request,
    build_id: BuildId,
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
) -> Response:
    v1.api_cancel_build(build_id, caller=caller, session=session)
    return RedirectResponse(page_url(request, "build", build_id, done="canceled"), status_code=303)


@router.post("/admin/build/{build_id}/delete/")
def delete(
    request: Request,
    build_id: BuildId,
    caller: Caller = FormCaller,
    session: Session = SessionDependency,
    conda_store: CondaStore = StoreDependency,
) -> Response:
    """As DELETE /api/v1/build/{id}/; then the environment's page."""
    build = service.get_build(session, build_id)
    namespace, name = build.environment.namespace.name, build.environment.name
    v1.api_delete_build(build_id, caller=caller, session=session, conda_store=conda_store)
    target = page_url(request, "environment", namespace, name, done="deleted")
    return RedirectResponse(target, status_code=303)
