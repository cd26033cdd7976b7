"""DAG tests: a migrated Airflow metadata DB and the sandbox's connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_fixture import Sandbox, sandbox

__all__ = ["Sandbox", "airflow_db", "sandbox", "sandbox_connection"]


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
