"""DAG tests: a migrated Airflow metadata DB and the sandbox's connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dag_runs import RestApi
from sandbox_fixture import Sandbox, sandbox

from istio_upgrade import upgrade_lock
from istio_upgrade.config import PROMETHEUS_URLS_ENV

__all__ = ["Sandbox", "airflow_db", "rest_api", "sandbox", "sandbox_connection", "seeded"]


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """`airflow db migrate` once per session (SQLite under AIRFLOW_HOME; it is idempotent)."""
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)


@pytest.fixture(scope="session")
def sandbox_connection(sandbox: Sandbox, airflow_db: None) -> Iterator[Sandbox]:
    """kubernetes_default points at the sandbox, as the demo sets it up."""
    # the operator's allow-list: the sandbox's Prometheus (config.PROMETHEUS_URLS_ENV)
    os.environ[PROMETHEUS_URLS_ENV] = sandbox.prometheus_url
    os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
        {
            "conn_type": "kubernetes",
            "extra": {"kube_config_path": sandbox.kubeconfig, "in_cluster": False},
        }
    )
    yield sandbox
    os.environ.pop("AIRFLOW_CONN_KUBERNETES_DEFAULT", None)
    os.environ.pop(PROMETHEUS_URLS_ENV, None)


@pytest.fixture(scope="session")
def rest_api(airflow_db: None) -> RestApi:
    """Airflow's REST API in process, logged in as admin (answers approvals, clears tasks)."""
    return RestApi()


@pytest.fixture
def seeded(sandbox_connection: Sandbox) -> Iterator[Sandbox]:
    """Each run starts from the procedure's starting state (`sandbox/sandbox reset`) and
    must end with the cluster's upgrade lock released, whatever the run's end was."""
    sandbox_connection.reset()
    yield sandbox_connection
    kube = sandbox_connection.kube()
    left = upgrade_lock.current(kube)
    if left is not None:
        upgrade_lock.release(kube, left.holder)  # the next test starts free either way
    assert left is None, f"the run left the upgrade lock held by {left.holder}"
