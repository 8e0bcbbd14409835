"""The rows of the list benchmarks' seed, as plain dicts: one definition for both servers.

Ours and the original (conda-store-server 2025.2.2) name these tables and columns alike, so the
same rows go into each server's own schema through its own ORM tables (bench_list.seed for ours,
original_seed.py inside the throwaway venv for the original). Standard library only: the
original's venv imports this file too.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

ENVIRONMENTS = 10_000
NAMESPACES = 50
CHANNEL = "https://conda.anaconda.org/conda-forge"
PACKAGES = 2_000
BUILD_PACKAGES = 150  # package builds of build 1 (the first environment's current build)
PACKAGES_BUILD_ID = 1

Rows = list[dict[str, Any]]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def _digest(text: str, length: int = 64) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def environment_rows() -> dict[str, Rows]:
    """Namespaces, specifications, environments and their completed builds; a build's `status` is
    the enum member's name, which each side maps to its own enum."""
    now = _now()
    names = [f"env-{e:05d}" for e in range(ENVIRONMENTS)]
    return {
        "namespace": [{"id": n + 1, "name": f"team-{n:02d}", "metadata_": {}} for n in range(NAMESPACES)],
        "specification": [
            {
                "id": e + 1,
                "name": name,
                "spec": {"name": name, "dependencies": ["python"]},
                "sha256": _digest(name),
                "created_on": now,
                "is_lockfile": False,
            }
            for e, name in enumerate(names)
        ],
        "environment": [
            {"id": e + 1, "namespace_id": e % NAMESPACES + 1, "name": name} for e, name in enumerate(names)
        ],
        "build": [
            {
                "id": e + 1,
                "specification_id": e + 1,
                "environment_id": e + 1,
                "status": "COMPLETED",
                "size": 1000,
                "scheduled_on": now,
                "started_on": now,
                "ended_on": now,
            }
            for e in range(ENVIRONMENTS)
        ],
    }


def package_rows() -> dict[str, Rows]:
    """One channel, PACKAGES packages with one build each, the first BUILD_PACKAGES of them in
    build PACKAGES_BUILD_ID; the package list and a build's packages read these."""
    now = _now()
    packages = [
        {
            "id": p + 1,
            "channel_id": 1,
            "name": f"pkg-{p:04d}",
            "version": f"1.{p % 7}.{p % 13}",
            "license": "BSD-3-Clause",
            "license_family": "BSD",
            "summary": f"package number {p}",
            "description": None,
        }
        for p in range(PACKAGES)
    ]
    builds = [
        {
            "id": p + 1,
            "package_id": p + 1,
            "channel_id": 1,
            "build": "py_0",
            "build_number": 0,
            "constrains": [],
            "depends": ["python >=3.8"],
            "md5": _digest(f"md5-{p}", 32),
            "sha256": _digest(f"sha-{p}"),
            "size": 10_000 + p,
            "subdir": "noarch",
            "timestamp": 1_700_000_000_000,
        }
        for p in range(PACKAGES)
    ]
    return {
        "conda_channel": [{"id": 1, "name": CHANNEL, "last_update": now}],
        "conda_package": packages,
        "conda_package_build": builds,
        "build_conda_package_build": [
            {"build_id": PACKAGES_BUILD_ID, "conda_package_build_id": p + 1} for p in range(BUILD_PACKAGES)
        ],
    }


SEQUENCED_TABLES = (
    "namespace",
    "specification",
    "environment",
    "build",
    "conda_channel",
    "conda_package",
    "conda_package_build",
)


def postgresql_sequence_statements(tables: tuple[str, ...]) -> list[str]:
    """Explicit ids leave PostgreSQL's sequences behind; a server that inserts a row at start-up
    (a default namespace, its indexed channels) would collide with id 1 without these."""
    # the sequence's name is looked up: the original's migrations renamed tables that own one
    return [f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT max(id) FROM {t}))" for t in tables]
