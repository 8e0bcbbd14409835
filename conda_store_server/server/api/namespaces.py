"""Namespace routes: read, create, update (metadata, v1 role mappings), v2 role mappings.

As upstream, the permission check comes before the existence check, so callers learn nothing
about namespaces they cannot read.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from conda_store_server import namespaces, service
from conda_store_server.limits import MAX_METADATA_BYTES, MAX_ROLE_MAPPINGS, check_json_size
from conda_store_server.server import schema
from conda_store_server.server.auth import Permissions
from conda_store_server.server.dependencies import Caller, CallerDependency, SessionDependency

router = APIRouter(prefix="/api/v1")
ACK = {"status": "ok", "message": None}


RoleList = Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=10)]


class NamespaceUpdate(BaseModel):
    metadata: dict[str, Any] | None = None
    role_mappings: dict[Annotated[str, Field(max_length=255)], RoleList] | None = Field(
        None, max_length=MAX_ROLE_MAPPINGS
    )


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    check_json_size(metadata, "namespace metadata", MAX_METADATA_BYTES)
    return metadata


class RoleMapping(BaseModel):
    other_namespace: str = Field(max_length=255)
    role: str = Field(max_length=64)


class RoleMappingDeletion(BaseModel):
    other_namespace: str = Field(max_length=255)


@router.get("/namespace/{namespace}/")
def api_get_namespace(
    namespace: str, caller: Caller = CallerDependency, session: Session = SessionDependency
) -> dict[str, Any]:
    caller.require(namespace, Permissions.NAMESPACE_READ)
    row = service.get_namespace(session, namespace)
    return {"status": "ok", "data": schema.Namespace.of(row).model_dump(mode="json"), "message": None}


@router.post("/namespace/{namespace}/")
def api_create_namespace(
    namespace: str, caller: Caller = CallerDependency, session: Session = SessionDependency
) -> dict[str, Any]:
    caller.require(namespace, Permissions.NAMESPACE_CREATE)
    namespaces.create_namespace(session, namespace)
    return ACK


@router.put("/namespace/{namespace}/")
def api_update_namespace(
    namespace: str,
    body: NamespaceUpdate,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
) -> dict[str, Any]:
    caller.require(
        namespace,
        Permissions.NAMESPACE_UPDATE,
        Permissions.NAMESPACE_ROLE_MAPPING_CREATE,
        Permissions.NAMESPACE_ROLE_MAPPING_DELETE,
    )
    row = service.get_namespace(session, namespace)
    if body.metadata is not None:
        row.metadata_ = check_metadata(body.metadata)
    if body.role_mappings is not None:
        namespaces.replace_role_mappings_v1(session, row, body.role_mappings)
    return ACK


@router.put("/namespace/{namespace}/metadata")
def api_update_namespace_metadata(
    namespace: str,
    metadata: dict[str, Any] = Body(...),
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
) -> dict[str, Any]:
    caller.require(namespace, Permissions.NAMESPACE_UPDATE)
    service.get_namespace(session, namespace).metadata_ = check_metadata(metadata)
    return ACK


@router.get("/namespace/{namespace}/roles")
def api_list_role_mappings(
    namespace: str, caller: Caller = CallerDependency, session: Session = SessionDependency
) -> dict[str, Any]:
    caller.require(namespace, Permissions.NAMESPACE_READ, Permissions.NAMESPACE_ROLE_MAPPING_READ)
    # held while the rows are shaped: each row names it, and a namespace no longer referenced
    # leaves the session's (weak) identity map, so that naming it would read it again per row
    row = service.get_namespace(session, namespace)
    rows = namespaces.mappings_v2(session, row)
    return {"status": "ok", "data": [namespaces.mapping_v2_json(r) for r in rows], "message": None}


@router.delete("/namespace/{namespace}/roles")
def api_delete_role_mappings(
    namespace: str, caller: Caller = CallerDependency, session: Session = SessionDependency
) -> dict[str, Any]:
    caller.require(namespace, Permissions.NAMESPACE_READ, Permissions.NAMESPACE_ROLE_MAPPING_DELETE)
    namespaces.delete_mappings_v2(session, service.get_namespace(session, namespace))
    return ACK


@router.get("/namespace/{namespace}/role")
def api_get_role_mapping(
    namespace: str,
    other_namespace: str = Query(..., max_length=255),
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
) -> dict[str, Any]:
    caller.require(namespace, Permissions.NAMESPACE_READ, Permissions.NAMESPACE_ROLE_MAPPING_READ)
    row = namespaces.get_mapping_v2(session, service.get_namespace(session, namespace), other_namespace)
    return {"status": "ok", "data": namespaces.mapping_v2_json(row), "message": None}


@router.post("/namespace/{namespace}/role")
def api_create_role_mapping(
    namespace: str,
    body: RoleMapping,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
) -> dict[str, Any]:
    caller.require(namespace, Permissions.NAMESPACE_READ, Permissions.NAMESPACE_ROLE_MAPPING_CREATE)
    row = service.get_namespace(session, namespace)
    namespaces.create_mapping_v2(session, row, body.other_namespace, body.role)
    return ACK


@router.put("/namespace/{namespace}/role")
def api_update_role_mapping(
    namespace: str,
    body: RoleMapping,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
) -> dict[str, Any]:
    caller.require(namespace, Permissions.NAMESPACE_READ, Permissions.NAMESPACE_ROLE_MAPPING_UPDATE)
    row = service.get_namespace(session, namespace)
    namespaces.get_mapping_v2(session, row, body.other_namespace).role = namespaces.check_role(body.role)
    return ACK


@router.delete("/namespace/{namespace}/role")
def api_delete_role_mapping(
    namespace: str,
    body: RoleMappingDeletion,
    caller: Caller = CallerDependency,
    session: Session = SessionDependency,
) -> dict[str, Any]:
    caller.require(namespace, Permissions.NAMESPACE_READ, Permissions.NAMESPACE_ROLE_MAPPING_DELETE)
    row = service.get_namespace(session, namespace)
    session.delete(namespaces.get_mapping_v2(session, row, body.other_namespace))
    return ACK
