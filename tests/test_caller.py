"""The caller's database role mappings are read lazily, and never on the event loop."""

from __future__ import annotations

import asyncio

import pytest

from conda_store_server.db.models import Namespace, NamespaceRoleMapping
from conda_store_server.server.auth import AuthenticationToken, Permissions
from conda_store_server.server.dependencies import Caller


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_role_mappings_are_read_in_a_thread_and_refused_on_the_event_loop(conda_store, client) -> None:
    with conda_store.session() as session:
        bob_namespace = Namespace(name="bob", metadata_={})
        session.add(bob_namespace)
        session.flush()
        session.add(NamespaceRoleMapping(namespace_id=bob_namespace.id, entity="lab/*", role="viewer"))
    authentication = client.app.state.authentication
    bob = AuthenticationToken(primary_namespace="bob", role_bindings={})

    with conda_store.session() as session:

        async def on_the_loop() -> None:
            Caller(bob, authentication, "default", session).can("lab/env", Permissions.ENVIRONMENT_READ)

        with pytest.raises(RuntimeError, match="blocks the event loop"):
            asyncio.run(on_the_loop())

        caller = Caller(bob, authentication, "default", session)
        assert caller.database_bindings == {"lab/*": {"viewer"}}
        assert caller.can("lab/env", Permissions.ENVIRONMENT_READ)
        assert not caller.can("other/env", Permissions.ENVIRONMENT_READ)
