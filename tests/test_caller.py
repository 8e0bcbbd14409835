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


def test_callers_of_concurrent_requests_read_their_mappings_at_the_same_time() -> None:
    """No lock is shared between callers: two requests' threads are inside the read at once
    (with `functools.cached_property` on Python 3.11 the second waited for the first, which
    held the lock while it waited for a database connection: a deadlock under load)."""
    import threading

    both_inside = threading.Barrier(2, timeout=10)

    class Waiting:
        def database_role_bindings(self, session, entity):
            both_inside.wait()  # broken (BrokenBarrierError) unless both threads get here
            return {f"{entity.primary_namespace}/*": {"viewer"}}

    class Authentication:
        authorization = Waiting()

    results: dict[str, object] = {}

    def read(name: str) -> None:
        caller = Caller(AuthenticationToken(primary_namespace=name), Authentication(), "default", object())
        try:
            results[name] = caller.database_bindings
        except threading.BrokenBarrierError as error:
            results[name] = error

    threads = [threading.Thread(target=read, args=(name,)) for name in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {"ann": {"ann/*": {"viewer"}}, "bob": {"bob/*": {"viewer"}}}
