"""/metrics: Prometheus text with the upstream names and the figures operators alert on."""

from __future__ import annotations

import pytest
from conftest import login, submit, wait_for_build
from prometheus_client.parser import text_string_to_metric_families
from traitlets.config import Config

from conda_store_server.server.app import CondaStoreServer


def samples(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_follow_the_builds(client, worker) -> None:
    before = samples(client)
    assert before[("conda_store_environments", ())] == 0
    assert before[("conda_store_disk_total", ())] > before[("conda_store_disk_free", ())] > 0
    login(client)
    build_id = submit(client, "name: metered\ndependencies: [hello-py]\n")
    assert wait_for_build(client, build_id)["status"] == "COMPLETED"
    client.cookies.clear()  # no authentication needed, as upstream
    after = samples(client)
    assert after[("conda_store_build_completed", ())] == 1
    assert after[("conda_store_builds", (("status", "COMPLETED"),))] == 1
    assert after[("conda_store_builds", (("status", "FAILED"),))] == 0
    assert after[("conda_store_queue_depth", ())] == 0
    assert after[("conda_store_environments", ())] == 1
    assert after[("conda_store_environments_size_bytes", ())] > 0
    assert after[("conda_store_build_duration_seconds_count", ())] == 1
    assert after[("conda_store_build_duration_seconds_bucket", (("le", "+Inf"),))] == 1


def test_queue_depth_counts_waiting_builds(client) -> None:
    login(client)
    for number in range(3):
        submit(client, f"name: waiting-{number}\ndependencies: [python]\n")
    assert samples(client)[("conda_store_queue_depth", ())] == 3


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_enable_metrics_false_removes_the_route(conda_store, store_settings) -> None:
    from fastapi.testclient import TestClient

    server = CondaStoreServer(
        config=Config({**store_settings, "CondaStoreServer": {"enable_metrics": False}})
    )
    with TestClient(server.create_app(conda_store)) as client:
        assert client.get("/metrics").status_code == 404
