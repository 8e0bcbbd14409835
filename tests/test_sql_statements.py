"""Every list route issues a constant number of SQL statements per request.

An N+1 pattern (a lazy load per item of a page) makes a page of 100 cost 100 round trips to the
database, which is what throughput under load pays for. Here each list route is requested with
page sizes 5 and 100, on a seeded store of N and then 3N items, as an administrator and as a user
who sees only some namespaces (through a token and through database role mappings), and the
statements the engine executes are counted: the count must be the same in every case and equal
to the one stated below.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from conda_store_server.app import CondaStore
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
    NamespaceRoleMappingV2,
    Specification,
)
from conda_store_server.server.auth import AuthenticationToken

pytestmark = pytest.mark.postgres

NAMESPACES_PER_UNIT = 4
ENVIRONMENTS_PER_NAMESPACE = 10
CHANNELS_PER_UNIT = 2
PACKAGE_NAMES = ("python", "zlib", "numpy", "pandas", "requests", "openssl", "libffi", "pip", "wheel", "xz")
PACKAGES_PER_BUILD_PER_UNIT = 8
SIZES = (5, 100)
BASE_TIME = datetime.datetime(2026, 1, 1, 12, 0, 0)

#: The statements of one request, by route. A request that checks the caller's permissions
#: reads the caller's database role mappings once (one statement, however many namespaces they
#: name); a v1 list then counts and reads its page; an environment page reads the role mappings
#: of its namespaces in one statement.
EXPECTED = {
    "/api/v1/namespace/": 3,  # role mappings of the caller, count, page
    "/api/v1/environment/": 4,  # role mappings, count, page, namespaces' role mappings
    "/api/v2/environment/": 4,  # role mappings, count, page, namespaces' role mappings
    "/api/v1/build/": 3,  # role mappings, count, page (artifacts and specifications are not shown)
    "/api/v1/build/{id}/packages/": 4,  # the build's environment, role mappings, count, page
    "/api/v1/channel/": 2,  # count, page
    "/api/v1/package/": 2,  # count, page (channels joined)
    "/api/v1/namespace/{namespace}/roles": 3,  # role mappings, namespace, its v2 mappings (joined)
}


@pytest.fixture
def server_settings() -> dict[str, Any]:
    """Only the API: the list routes are what is counted here."""
    return {"enable_ui": False}


@dataclass
class Case:
    """One request of a list route: `path` names the route in EXPECTED, `url` is requested."""

    path: str
    params: dict[str, Any]
    url: str | None = None
    paged: bool = True  # takes a page size (`size` in v1, `limit` in v2)
    second_page: bool = False  # v2: count the request for the page after a first one
    last_page: bool = False  # v1: count the request for the last page (an OFFSET past the first)

    @property
    def label(self) -> str:
        return f"{self.url or self.path} {self.params}"


# ------------------------------------------------------------------------------ seeding
def seed_unit(session: Session, unit: int) -> None:
    """One unit of realistic data: channels with packages, namespaces with v1 and v2 role
    mappings, environments with specifications, builds (completed, failed, queued), their
    packages and artifacts, and role mappings of `carol`'s namespace naming some of them.

    Rows are inserted through the models, as the service would leave them after real builds,
    without running hundreds of builds.
    """
    channels = [
        CondaChannel(name=f"https://conda.example.org/channel-{unit}-{c}", last_update=BASE_TIME)
        for c in range(CHANNELS_PER_UNIT)
    ]
    package_builds: dict[str, list[CondaPackageBuild]] = {}
    for position, channel in enumerate(channels):
        for number, name in enumerate(PACKAGE_NAMES):
            package = CondaPackage(
                channel=channel,
                name=name,
                version=f"{unit + 1}.{position}.{number}",
                license="BSD-3-Clause",
                license_family="BSD",
                summary=f"the {name} package",
                description=f"{name}, built for tests",
            )
            for python in ("py311_0", "py312_0"):
                digest = hashlib.sha256(f"{channel.name}/{name}/{python}".encode()).hexdigest()
                package_build = CondaPackageBuild(
                    package=package,
                    channel=channel,
                    build=python,
                    build_number=0,
                    constrains=[],
                    depends=["python >=3.11"] if name != "python" else [],
                    md5=digest[:32],
                    sha256=digest,
                    size=1000 + number,
                    subdir="linux-64",
                    timestamp=1_700_000_000,
                )
                package_builds.setdefault(name, []).append(package_build)
    session.add_all(channels)

    names = [f"team-{unit * NAMESPACES_PER_UNIT + n:02d}" for n in range(NAMESPACES_PER_UNIT)]
    namespaces = [Namespace(name=name, metadata_={"owner": name}) for name in names]
    session.add_all(namespaces)
    for namespace in namespaces:
        namespace.role_mappings = [
            NamespaceRoleMapping(entity=f"{namespace.name}/*", role="developer"),
            NamespaceRoleMapping(entity=f"{names[0]}/*", role="viewer"),
        ]
    team_zero = session.scalar(select(Namespace).where(Namespace.name == "team-00")) or namespaces[0]
    session.add_all(
        NamespaceRoleMappingV2(namespace=team_zero, other_namespace=other, role="viewer")
        for other in namespaces
        if other is not team_zero
    )
    carol = session.scalar(select(Namespace).where(Namespace.name == "carol"))
    if carol is None:
        carol = Namespace(name="carol", metadata_={})
        session.add(carol)
    carol.role_mappings.extend(
        [
            NamespaceRoleMapping(entity=f"{names[1]}/*", role="viewer"),
            NamespaceRoleMapping(entity=f"{names[2]}/env-00*", role="developer"),
        ]
    )

    per_build = PACKAGES_PER_BUILD_PER_UNIT * (unit + 1)
    everything = [b for builds in package_builds.values() for b in builds]
    for namespace in namespaces:
        for number in range(ENVIRONMENTS_PER_NAMESPACE):
            name = f"env-{number:03d}"
            spec = {"name": name, "channels": [channels[0].name], "dependencies": ["python", "zlib"]}
            specification = Specification(
                name=name,
                spec=spec,
                sha256=hashlib.sha256(f"{namespace.name}/{name}".encode()).hexdigest(),
                created_on=BASE_TIME,
            )
            first, second = seed_builds(specification, number)
            environment = Environment(
                namespace=namespace,
                name=name,
                description=f"{name} of {namespace.name}",
                builds=[first, second],
            )
            session.add(environment)
            if first.status == BuildStatus.COMPLETED:
                chosen = [package_builds["python"][0], package_builds["zlib"][0]]
                rest = [b for b in everything if b not in chosen]
                offset = (number * 7) % len(rest)
                first.package_builds = chosen + (rest[offset:] + rest[:offset])[: per_build - 2]
            session.flush()
            if first.status == BuildStatus.COMPLETED:
                environment.current_build_id = (
                    second.id if second.status == BuildStatus.COMPLETED else first.id
                )
                if second.status == BuildStatus.COMPLETED:
                    second.package_builds = list(first.package_builds)
    session.flush()


def seed_builds(specification: Specification, number: int) -> tuple[Build, Build]:
    """Two builds of an environment: every fifth has none completed (a failed one, then one
    queued); the others a completed one, then another completed or a failed one."""
    started = BASE_TIME + datetime.timedelta(minutes=number)
    if number % 5 == 4:
        statuses = (BuildStatus.FAILED, BuildStatus.QUEUED)
    elif number % 2 == 0:
        statuses = (BuildStatus.COMPLETED, BuildStatus.COMPLETED)
    else:
        statuses = (BuildStatus.COMPLETED, BuildStatus.FAILED)
    builds = []
    for position, status in enumerate(statuses):
        queued = status == BuildStatus.QUEUED
        build = Build(
            specification=specification,
            status=status,
            status_info=None if status != BuildStatus.FAILED else "Cannot solve the request",
            size=0 if status != BuildStatus.COMPLETED else 10_000_000 + number,
            scheduled_on=started + datetime.timedelta(seconds=position),
            started_on=None if queued else started + datetime.timedelta(seconds=position + 1),
            ended_on=None if queued else started + datetime.timedelta(seconds=position + 30),
        )
        kinds = [BuildArtifactType.LOGS] if not queued else []
        if status == BuildStatus.COMPLETED:
            kinds += [
                BuildArtifactType.LOCKFILE,
                BuildArtifactType.YAML,
                BuildArtifactType.CONDA_PACK,
                BuildArtifactType.DIRECTORY,
            ]
        build.build_artifacts = [
            BuildArtifact(artifact_type=kind, key=f"{kind.value.lower()}/{specification.sha256}")
            for kind in kinds
        ]
        builds.append(build)
    return builds[0], builds[1]


def seed(conda_store: CondaStore, units: range) -> None:
    with Session(conda_store.engine) as session, session.begin():
        for unit in units:
            seed_unit(session, unit)


# ------------------------------------------------------------------------------ counting
@contextmanager
def counted_statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements the engine sends to the database while the block runs."""
    statements: list[str] = []

    def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def bearer(client: TestClient, primary_namespace: str, bindings: dict[str, list[str]]) -> str:
    backend = client.app.state.authentication.authentication
    entity = AuthenticationToken(primary_namespace=primary_namespace, role_bindings=bindings)
    return backend.encrypt_token(entity)


def cases(client: TestClient, conda_store: CondaStore) -> list[Case]:
    """The list requests to count: every list route, with its filters and sort options."""
    with Session(conda_store.engine) as session:
        # the completed build with the most packages among those carol may read too
        readable = [f"team-{unit * NAMESPACES_PER_UNIT + 1:02d}" for unit in range(3)]
        widest = max(
            session.scalars(
                select(Build)
                .join(Build.environment)
                .join(Environment.namespace)
                .where(Build.status == BuildStatus.COMPLETED, Namespace.name.in_(readable))
            ),
            key=lambda b: (len(b.package_builds), b.id),
        )
    jwt = bearer(client, "carol", {"team-01/*": ["viewer"], "team-00/*": ["viewer"]})
    environment_filters: list[dict[str, Any]] = [
        {},
        {"search": "env-00"},
        {"search": "team-0"},
        {"namespace": "team-01"},
        {"name": "env-003"},
        {"status": "COMPLETED"},
        {"packages": ["python", "zlib"]},
        {"artifact": "CONDA_PACK"},
        {"status": "COMPLETED", "artifact": "LOCKFILE", "packages": ["python"], "search": "env"},
        {"jwt": jwt},
    ]
    found: list[Case] = []
    for filters in environment_filters:
        found.append(Case("/api/v1/environment/", filters))
        found.append(Case("/api/v2/environment/", filters))
    for sort in (
        {"sort_by": "name", "order": "desc"},
        {"sort_by": ["namespace", "name"], "order": "desc"},
        {"sort_by": "name,namespace"},
    ):
        found.append(Case("/api/v1/environment/", {**sort, "search": "env"}))
    found.append(Case("/api/v1/environment/", {}, last_page=True))
    for sort in ({"sort_by": "name", "order": "desc"}, {"sort_by": "namespace,name"}, {}):
        found.append(Case("/api/v2/environment/", sort, second_page=True))
    for filters in (
        {},
        {"status": "COMPLETED"},
        {"status": "FAILED"},
        {"packages": ["python", "zlib"]},
        {"artifact": "CONDA_PACK"},
        {"namespace": "team-00"},
        {"name": "env-000"},
        {"environment_id": widest.environment_id},
        {"sort_by": "started_on", "order": "desc"},
        {"sort_by": ["ended_on", "scheduled_on"]},
    ):
        found.append(Case("/api/v1/build/", filters))
    found.append(Case("/api/v1/build/", {"status": "COMPLETED"}, last_page=True))
    found.append(Case("/api/v1/namespace/", {}))
    found.append(Case("/api/v1/namespace/", {"sort_by": "name", "order": "desc"}))
    packages_url = f"/api/v1/build/{widest.id}/packages/"
    for filters in ({}, {"search": "py"}, {"build": "py311"}, {"sort_by": "version", "order": "desc"}):
        found.append(Case("/api/v1/build/{id}/packages/", filters, url=packages_url))
    found.append(Case("/api/v1/channel/", {}))
    for filters in (
        {},
        {"search": "py"},
        {"search": "zlib", "exact": "1"},
        {"build": "py312"},
        {"distinct_on": "name"},
        {"distinct_on": ["channel", "name"], "search": "p"},
        {"sort_by": ["name", "version"], "order": "desc"},
    ):
        found.append(Case("/api/v1/package/", filters))
    found.append(Case("/api/v1/package/", {}, last_page=True))
    found.append(
        Case(
            "/api/v1/namespace/{namespace}/roles",
            {},
            url="/api/v1/namespace/team-00/roles",
            paged=False,
        )
    )
    return found


def request_count(client: TestClient, engine: Engine, case: Case, size: int, headers: dict[str, str]) -> int:
    """The statements of one request of `case` with page size `size` (the request must succeed
    with a non-empty answer, or the count would say nothing)."""
    params = dict(case.params)
    if case.paged:
        params["limit" if case.path.startswith("/api/v2/") else "size"] = size
    url = case.url or case.path
    if case.second_page:  # the page after the first SIZES[0] items
        first = client.get(url, params={**params, "limit": SIZES[0]}, headers=headers)
        assert first.status_code == 200, first.text
        params["cursor"] = first.json()["cursor"]
    if case.last_page:
        first = client.get(url, params=params, headers=headers)
        assert first.status_code == 200, first.text
        params["page"] = -(-first.json()["count"] // size)
    with counted_statements(engine) as statements:
        response = client.get(url, params=params, headers=headers)
    assert response.status_code == 200, f"{case.label}: {response.text}"
    assert response.json()["data"], f"{case.label} gave an empty page: choose data that fills it"
    return len(statements)


@pytest.mark.parametrize("who", ["admin", "user"])
def test_list_routes_issue_a_constant_number_of_statements(
    client: TestClient, conda_store: CondaStore, who: str
) -> None:
    if who == "admin":
        token = bearer(client, "admin", {"*/*": ["admin"]})
    else:
        # team-00 through the token; team-01, team-05, ... and part of team-02, team-06, ...
        # through carol's database role mappings
        token = bearer(client, "carol", {"team-00/*": ["admin"]})
    headers = {"Authorization": f"Bearer {token}"}

    client.get("/api/v1/namespace/", headers=headers)  # a connected pool, as under load
    counts: dict[tuple[str, str], dict[tuple[int, int], int]] = {}
    for units, new in ((1, range(0, 1)), (3, range(1, 3))):  # N items, then 3N
        seed(conda_store, new)
        for case in cases(client, conda_store):
            for size in SIZES:
                count = request_count(client, conda_store.engine, case, size, headers)
                counts.setdefault((case.path, case.label), {})[(units, size)] = count

    wrong = [
        f"{label}: {measured} statements by (units of data, page size), expected {EXPECTED[path]} each"
        for (path, label), measured in counts.items()
        if set(measured.values()) != {EXPECTED[path]}
    ]
    assert not wrong, "\n".join(wrong)
