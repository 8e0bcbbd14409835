"""Namespaces and their role mappings (v1: ARN → role; v2: namespace → other namespace's role)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, joinedload

from conda_store_server.db.models import Namespace, NamespaceRoleMapping, NamespaceRoleMappingV2
from conda_store_server.exception import CondaStoreError, ConflictError, NotFoundError
from conda_store_server.service import check_name

ROLES = ("viewer", "developer", "admin")


def check_role(role: str) -> str:
    """`editor` is stored under its legacy name `developer`, as upstream does."""
    stored = "developer" if role == "editor" else role
    if stored not in ROLES:
        raise CondaStoreError(f"invalid role={role}")
    return stored


def create_namespace(session: Session, name: str) -> Namespace:
    check_name("namespace", name)
    # a soft-deleted namespace keeps its name: its kept artifacts still refer to it
    if session.scalar(select(Namespace.id).where(Namespace.name == name)) is not None:
        raise ConflictError("namespace already exists")
    namespace = Namespace(name=name, metadata_={})
    session.add(namespace)
    try:
        session.flush()
    except IntegrityError as error:
        raise ConflictError("namespace already exists") from error
    return namespace


def replace_role_mappings_v1(session: Session, namespace: Namespace, mappings: dict[str, list[str]]) -> None:
    from conda_store_server.server.auth import ARN_PATTERN

    rows = []
    for entity, roles in mappings.items():
        if ARN_PATTERN.match(entity) is None:
            raise CondaStoreError(f"invalid entity={entity}")
        rows.extend(NamespaceRoleMapping(entity=entity, role=check_role(role)) for role in roles)
    namespace.role_mappings = rows


def mapping_v2_json(row: NamespaceRoleMappingV2) -> dict[str, Any]:
    return {
        "id": row.id,
        "namespace": row.namespace.name,
        "other_namespace": row.other_namespace.name,
        "role": row.role,
    }


def _other(session: Session, name: str) -> Namespace:
    other = session.scalar(select(Namespace).where(Namespace.name == name, Namespace.deleted_on.is_(None)))
    if other is None:
        raise CondaStoreError(f"Namespace='{name}' not found")
    return other


def get_mapping_v2(session: Session, namespace: Namespace, other_name: str) -> NamespaceRoleMappingV2:
    other = _other(session, other_name)
    row = session.scalar(
        select(NamespaceRoleMappingV2).where(
            NamespaceRoleMappingV2.namespace_id == namespace.id,
            NamespaceRoleMappingV2.other_namespace_id == other.id,
        )
    )
    if row is None:
        raise NotFoundError("failed to find role")
    return row


def create_mapping_v2(session: Session, namespace: Namespace, other_name: str, role: str) -> None:
    row = NamespaceRoleMappingV2(
        namespace=namespace, other_namespace=_other(session, other_name), role=check_role(role)
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError as error:
        raise ConflictError(
            f"namespace {namespace.name} already grants a role to {other_name}; update it with PUT"
        ) from error


def mappings_v2(session: Session, namespace: Namespace) -> list[NamespaceRoleMappingV2]:
    return list(
        session.scalars(
            select(NamespaceRoleMappingV2)
            .where(NamespaceRoleMappingV2.namespace_id == namespace.id)
            .options(joinedload(NamespaceRoleMappingV2.other_namespace))  # named in every row
            .order_by(NamespaceRoleMappingV2.id)
        )
    )


def delete_mappings_v2(session: Session, namespace: Namespace) -> None:
    session.execute(delete(NamespaceRoleMappingV2).where(NamespaceRoleMappingV2.namespace_id == namespace.id))


def role_bindings_v1(session: Session, primary_namespace: str) -> dict[str, set[str]]:
    """Members of a namespace get the roles its v1 mappings name, on the ARNs they name."""
    bindings: dict[str, set[str]] = {}
    rows = session.execute(
        select(NamespaceRoleMapping.entity, NamespaceRoleMapping.role)
        .join(NamespaceRoleMapping.namespace)
        .where(Namespace.name == primary_namespace, Namespace.deleted_on.is_(None))
    )
    for entity, role in rows:
        bindings.setdefault(entity, set()).add(role)
    return bindings


def role_bindings_v2(session: Session, primary_namespace: str) -> dict[str, set[str]]:
    """A namespace N that granted the caller's namespace a role gives that role on `N/*`."""
    granting = aliased(Namespace)
    granted = aliased(Namespace)
    rows = session.execute(
        select(granting.name, NamespaceRoleMappingV2.role)
        .join(granting, granting.id == NamespaceRoleMappingV2.namespace_id)
        .join(granted, granted.id == NamespaceRoleMappingV2.other_namespace_id)
        .where(granted.name == primary_namespace, granting.deleted_on.is_(None))
    )
    bindings: dict[str, set[str]] = {}
    for name, role in rows:
        bindings.setdefault(f"{name}/*", set()).add(role)
    return bindings
