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
    os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps(
        {
            "conn_type": "kubernetes",
            "extra": {"kube_config_path": sandbox.kubeconfig, "in_cluster": False},
        }
    )
    yield sandbox
    os.environ.pop("AIRFLOW_CONN_KUBERNETES_DEFAULT", None)


@pytest.fixture(scope="session")
def rest_api(airflow_db: None) -> RestApi:
    """Airflow's REST API in process, logged in as admin (answers approvals, clears tasks)."""
    return RestApi()


@pytest.fixture
def seeded(sandbox_connection: Sandbox) -> Sandbox:
    """Each run starts from the procedure's starting state (`sandbox/sandbox reset`)."""
    sandbox_connection.reset()
    return sandbox_connection
