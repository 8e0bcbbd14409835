"""The v1 list routes: namespaces, environments, builds, a build's packages, channels, packages.

Each list is filtered (RBAC included), counted, sorted and paged by the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse
from sqlalchemy import Row, Select, exists, func, or_, select
from sqlalchemy.orm import Session, aliased, contains_eager, joinedload

from conda_store_server.db.models import (
    Build,
    BuildArtifact,
    BuildArtifactType,
    BuildStatus,
    CondaChannel,
    CondaPackage,
    CondaPackageBuild,
    Environment,
    Namespace,
    NamespaceRoleMapping,
    build_conda_package_build,
)
from conda_store_server.exception import NotFoundError
from conda_store_server.server import schema
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import (
    MAX_ID,
    BuildId,
    Caller,
    CallerDependency,
    SessionDependency,
)
from conda_store_server.server.namespace_pages import namespace_ordered_page
from conda_store_server.server.pagination import (
    PageArguments,
    page_arguments,
    paginate,
    sorted_query,
    visible_filter,
)
from conda_store_server.server.response_cache import cached_page

router = APIRouter(prefix="/api/v1")
Page = Depends(page_arguments)
DEPRECATION_HEADERS = {"Deprecation": "True", "Sunset": "Mon, 17 Mar 2025 00:00:00 UTC"}


def ok_page(data: list[Any], fields: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """Items are JSON-ready already: returning the response skips FastAPI's re-encoding of every
    item, a large share of a page's CPU."""
    return JSONResponse({"status": "ok", "data": data, "message": None, **fields}, headers=headers)


def token_bindings(caller: Caller, jwt: str | None) -> list[dict[str, Any]]:
    """The `jwt` filter: results must also be visible to that token (which must be valid)."""
    if jwt is None:
        return []
    entity = caller.authentication.authentication.decrypt_token(jwt)
    if entity is None:
        raise HTTPException(400, "invalid jwt: the token is malformed, expired or not signed by this server")
    return [caller.authentication.authorization.entity_bindings(entity)]


def has_packages(build_id_column: Any, names: list[str]) -> list[Any]:
    """One EXISTS per name: the build must contain every named package."""
    return [
        exists(
            select(1)
            .select_from(build_conda_package_build)
            .join(
                CondaPackageBuild, CondaPackageBuild.id == build_conda_package_build.c.conda_package_build_id
            )
            .join(CondaPackage, CondaPackage.id == CondaPackageBuild.package_id)
            .where(build_conda_package_build.c.build_id == build_id_column, CondaPackage.name == name)
        )
        for name in names
    ]


def has_artifact(build_id_column: Any, artifact: BuildArtifactType) -> Any:
    return exists(
        select(1).where(BuildArtifact.build_id == build_id_column, BuildArtifact.artifact_type == artifact)
    )


# ------------------------------------------------------------------------------ namespaces
@router.get("/namespace/")
@cached_page
def api_list_namespaces(
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    arguments: PageArguments = Page,
) -> dict[str, Any]:
    query = select(Namespace).where(
        Namespace.deleted_on.is_(None), visible_filter(caller.bindings, Namespace.name)
    )
    rows, fields = paginate(session, query, arguments, {"name": Namespace.name}, ["name"], Namespace.id)
    # upstream's namespace list has no `message` key; the official client does not need one
    return {"status": "ok", "data": [{"id": n.id, "name": n.name} for n in rows], **fields}


# ------------------------------------------------------------------------------ environments
@dataclass
class EnvironmentFilters:
    """The environment list filters, shared by v1 and v2."""

    search: str | None = None
    namespace: str | None = None
    name: str | None = None
    status: BuildStatus | None = None
    packages: list[str] = field(default_factory=list)
    artifact: BuildArtifactType | None = None
    jwt: str | None = None


async def environment_filters(
    search: str | None = Query(None, max_length=255, description="Substring of the namespace or name"),
    namespace: str | None = Query(None, max_length=255),
    name: str | None = Query(None, max_length=255),
    status: BuildStatus | None = Query(None, description="Status of the current build"),
    packages: list[str] = Query([], description="The current build contains all these packages"),
    artifact: BuildArtifactType | None = Query(None, description="The current build has this artifact"),
    jwt: str | None = Query(None, max_length=8192, description="Only what this token may also see"),
) -> EnvironmentFilters:
    """Async: FastAPI runs a class or plain function dependency in a worker thread, a hop that
    costs more than reading seven query parameters."""
    return EnvironmentFilters(search, namespace, name, status, packages, artifact, jwt)


EnvironmentFiltersDependency = Depends(environment_filters)


#: schema.reported_current_build_id in SQL: the newest build until one completes (the
#: subquery runs only for environments without a current build)
REPORTED_CURRENT_BUILD_ID = func.coalesce(
    Environment.current_build_id,
    select(func.max(Build.id))
    .where(Build.environment_id == Environment.id, Build.deleted_on.is_(None))
    .correlate(Environment)
    .scalar_subquery(),
).label("current_build_id")

ENVIRONMENT_COLUMNS = (
    Environment.id,
    Environment.name,
    REPORTED_CURRENT_BUILD_ID,
    func.coalesce(Environment.description, "").label("description"),
    Environment.namespace_id,
    Namespace.name.label("namespace_name"),
    Namespace.metadata_.label("namespace_metadata"),
)


def environment_query(caller: Caller, filters: EnvironmentFilters) -> Select:
    """The environments the caller may see that match every filter, as ENVIRONMENT_COLUMNS rows."""
    query = (
        select(*ENVIRONMENT_COLUMNS)
        .select_from(Environment)
        .join(Environment.namespace)
        .where(
            Environment.deleted_on.is_(None),
            Namespace.deleted_on.is_(None),
            visible_filter(
                caller.bindings,
                Namespace.name,
                Environment.name,
                token_bindings(caller, filters.jwt),
            ),
        )
    )
    if filters.search:
        pattern = f"%{filters.search.replace('%', '').replace('_', '')}%"
        query = query.where(or_(Namespace.name.like(pattern), Environment.name.like(pattern)))
    if filters.namespace is not None:
        query = query.where(Namespace.name == filters.namespace)
    if filters.name is not None:
        query = query.where(Environment.name == filters.name)
    if filters.status is not None or filters.packages or filters.artifact is not None:
        current = aliased(Build)
        query = query.join(current, current.id == Environment.current_build_id)
        if filters.status is not None:
            query = query.where(current.status == filters.status)
        if filters.artifact is not None:
            query = query.where(has_artifact(current.id, filters.artifact))
        query = query.where(*has_packages(current.id, filters.packages))
    return query


def namespaces_json(session: Session, rows: list[Row[Any]]) -> dict[int, dict[str, Any]]:
    """The Namespace shape of each namespace on a page, role mappings included, in one query."""
    namespaces: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row.namespace_id not in namespaces:
            namespaces[row.namespace_id] = {
                "id": row.namespace_id,
                "name": row.namespace_name,
                "metadata_": row.namespace_metadata,
                "role_mappings": [],
            }
    if namespaces:
        mappings = session.execute(
            select(
                NamespaceRoleMapping.namespace_id,
                NamespaceRoleMapping.id,
                NamespaceRoleMapping.entity,
                NamespaceRoleMapping.role,
            )
            .where(NamespaceRoleMapping.namespace_id.in_(namespaces))
            .order_by(NamespaceRoleMapping.id)
        )
        for namespace_id, mapping_id, entity, role in mappings:
            mapping = {"id": mapping_id, "entity": entity, "role": role}
            namespaces[namespace_id]["role_mappings"].append(mapping)
    return namespaces


def environments_json(
    session: Session, rows: list[Row[Any]], with_current_build: bool = True
) -> list[dict[str, Any]]:
    """The Environment shape for a page of rows selected with ENVIRONMENT_COLUMNS: plain rows,
    not ORM objects, and each namespace built once per page (most of a list request's CPU was
    loading and serializing objects)."""
    namespaces = namespaces_json(session, rows)
    result = []
    for row in rows:
        item = {
            "id": row.id,
            "namespace": namespaces[row.namespace_id],
            "name": row.name,
            "current_build_id": row.current_build_id,
            "current_build": None,
            "description": row.description,
        }
        if not with_current_build:
            del item["current_build"]
        result.append(item)
    return result


ENVIRONMENT_SORT = {"namespace": Namespace.name, "name": Environment.name}


@router.get("/environment/")
@cached_page
def api_list_environments(
    filters: EnvironmentFilters = EnvironmentFiltersDependency,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    arguments: PageArguments = Page,
) -> JSONResponse:
    query = environment_query(caller, filters)
    # PostgreSQL's planner sorts every visible environment for an OFFSET page; SQLite's walks
    # the list index in order, which beats counting namespace by namespace.
    namespace_first = arguments.sort_by[:1] in ([], ["namespace"])
    if namespace_first and session.get_bind().dialect.name == "postgresql":
        ordered = sorted_query(query, arguments, ENVIRONMENT_SORT, ["namespace", "name"])
        ordered = ordered.order_by(Environment.id)
        rows, count = namespace_ordered_page(session, query, ordered, arguments)
        fields = {"page": arguments.page, "size": arguments.size, "count": count}
    else:
        rows, fields = paginate(
            session, query, arguments, ENVIRONMENT_SORT, ["namespace", "name"], Environment.id, entities=False
        )
    return ok_page(environments_json(session, rows), fields, DEPRECATION_HEADERS)


# ------------------------------------------------------------------------------ builds
BUILD_SORT = {
    "id": Build.id,
    "started_on": Build.started_on,
    "scheduled_on": Build.scheduled_on,
    "ended_on": Build.ended_on,
}


@router.get("/build/")
@cached_page
def api_list_builds(
    status: BuildStatus | None = Query(None),
    packages: list[str] = Query([], description="The build contains all these packages"),
    artifact: BuildArtifactType | None = Query(None),
    environment_id: int | None = Query(None, ge=0, le=MAX_ID),
    name: str | None = Query(None, max_length=255, description="Environment name"),
    namespace: str | None = Query(None, max_length=255),
    archived: bool | None = Query(None, description="Only archived (true) or live (false) builds"),
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    arguments: PageArguments = Page,
) -> JSONResponse:
    query = (
        select(Build)
        .join(Build.environment)
        .join(Environment.namespace)
        .where(
            Build.deleted_on.is_(None),
            visible_filter(caller.bindings, Namespace.name, Environment.name),
            *has_packages(Build.id, packages),
        )
    )
    if status is not None:
        query = query.where(Build.status == status)
    if artifact is not None:
        query = query.where(has_artifact(Build.id, artifact))
    if environment_id is not None:
        query = query.where(Build.environment_id == environment_id)
    if name is not None:
        query = query.where(Environment.name == name)
    if namespace is not None:
        query = query.where(Namespace.name == namespace)
    if archived is not None:
        query = query.where(Build.archived_on.is_not(None) if archived else Build.archived_on.is_(None))
    rows, fields = paginate(session, query, arguments, BUILD_SORT, ["id"], Build.id)
    return ok_page([schema.Build.of(b, detail=False).model_dump(mode="json") for b in rows], fields)


# ------------------------------------------------------------------------------ packages and channels
def channel_json(channel: CondaChannel) -> dict[str, Any]:
    return {
        "id": channel.id,
        "name": channel.name,
        "last_update": channel.last_update.isoformat() if channel.last_update else None,
    }


def package_json(package: CondaPackage) -> dict[str, Any]:
    return {
        "id": package.id,
        "channel": channel_json(package.channel),
        "license": package.license,
        "name": package.name,
        "version": package.version,
        "summary": package.summary,
    }


PACKAGE_SORT = {"channel": CondaChannel.name, "name": CondaPackage.name, "version": CondaPackage.version}


def package_filters(query: Select, search: str | None, exact: str | None, build: str | None) -> Select:
    if search:
        query = query.where(
            CondaPackage.name == search if exact else CondaPackage.name.contains(search, autoescape=True)
        )
    if build:
        query = query.where(
            exists(
                select(1).where(
                    CondaPackageBuild.package_id == CondaPackage.id,
                    CondaPackageBuild.build.contains(build, autoescape=True),
                )
            )
        )
    return query


def build_environment_arn(session: Session, build_id: int) -> str:
    """`namespace/name` of a build's environment, in one query: listing a build's packages
    needs only what authorizes it, not the build with its specification and artifacts."""
    row = session.execute(
        select(Namespace.name, Environment.name)
        .select_from(Build)
        .join(Build.environment)
        .join(Environment.namespace)
        .where(Build.id == build_id)
    ).first()
    if row is None:
        raise NotFoundError("build id does not exist")
    return f"{row[0]}/{row[1]}"


@router.get("/build/{build_id}/packages/")
@cached_page
def api_list_build_packages(
    build_id: BuildId,
    search: str | None = Query(None, max_length=255),
    exact: str | None = Query(None, max_length=16),
    build: str | None = Query(None, max_length=255),
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
    arguments: PageArguments = Page,
) -> JSONResponse:
    caller.require(build_environment_arn(session, build_id), Permissions.ENVIRONMENT_READ)
    query = (
        select(CondaPackage)
        .join(CondaPackage.channel)
        .options(contains_eager(CondaPackage.channel))
        .where(
            exists(
                select(1)
                .select_from(build_conda_package_build)
                .join(
                    CondaPackageBuild,
                    CondaPackageBuild.id == build_conda_package_build.c.conda_package_build_id,
                )
                .where(
                    build_conda_package_build.c.build_id == build_id,
                    CondaPackageBuild.package_id == CondaPackage.id,
                )
            )
        )
    )
    query = package_filters(query, search, exact, build)
    rows, fields = paginate(session, query, arguments, PACKAGE_SORT, ["channel", "name"], CondaPackage.id)
    return ok_page([package_json(p) for p in rows], fields)


@router.get("/channel/")
@cached_page
def api_list_channels(session: Session = SessionDependency, arguments: PageArguments = Page) -> JSONResponse:
    query = select(CondaChannel)
    rows, fields = paginate(session, query, arguments, {"name": CondaChannel.name}, ["name"], CondaChannel.id)
    return ok_page([channel_json(c) for c in rows], fields)


@router.get("/package/")
@cached_page
def api_list_packages(
    search: str | None = Query(None, max_length=255),
    exact: str | None = Query(None, max_length=16),
    build: str | None = Query(None, max_length=255),
    distinct_on: list[str] = Query([], description="channel, name and/or version: one row per value"),
    session: Session = SessionDependency,
    arguments: PageArguments = Page,
) -> JSONResponse:
    unknown = [key for key in distinct_on if key not in PACKAGE_SORT]
    if unknown:
        raise HTTPException(400, f"Cannot use distinct_on {unknown}. Valid values are {sorted(PACKAGE_SORT)}")
    query = package_filters(select(CondaPackage).join(CondaPackage.channel), search, exact, build)
    if distinct_on:
        # One row per distinct value: the lowest id of each group, on every database alike
        # (SQLite has no DISTINCT ON).
        columns = [PACKAGE_SORT[key] for key in distinct_on]
        firsts = package_filters(
            select(func.min(CondaPackage.id)).join(CondaPackage.channel).group_by(*columns),
            search,
            exact,
            build,
        )
        query = select(CondaPackage).join(CondaPackage.channel).where(CondaPackage.id.in_(firsts))
        arguments.sort_by = list(dict.fromkeys([*distinct_on, *arguments.sort_by]))
    query = query.options(joinedload(CondaPackage.channel))
    rows, fields = paginate(
        session, query, arguments, PACKAGE_SORT, ["channel", "name", "version"], CondaPackage.id
    )
    return ok_page([package_json(p) for p in rows], fields)
