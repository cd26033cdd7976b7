"""No credential leaks into what Airflow keeps of a run: task and trigger logs, XComs (the
report among them). Checked after a whole upgrade under `airflow standalone`."""

from __future__ import annotations

import configparser
import sqlite3
from pathlib import Path

import pytest

from standalone.standalone_stack import Stack, UiRun

pytestmark = pytest.mark.sandbox


def secrets(stack: Stack) -> dict[str, str]:
    """A distinctive piece of every credential the run could have printed, by name."""
    found: dict[str, str] = {}
    for key in sorted((Path(stack.box["SANDBOX_HOME"]) / "pki").glob("*.key")):
        body = "".join(line for line in key.read_text().splitlines() if "-----" not in line)
        found[f"private key {key.name}"] = body[40:88]  # past the header that all keys share
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(stack.airflow_home / "airflow.cfg")
    found["Airflow JWT secret"] = cfg.get("api_auth", "jwt_secret")
    found["Airflow admin password"] = stack.password
    found["PEM block"] = "PRIVATE KEY-----"
    return {name: value for name, value in found.items() if len(value) >= 12}


def test_no_credential_in_logs_or_xcoms(stack: Stack, ui_run: UiRun) -> None:
    assert ui_run.state == "success"
    wanted = secrets(stack)
    assert len(wanted) >= 5, wanted.keys()  # the sandbox's keys were found: the check can fail

    places: dict[str, str] = {}
    logs = sorted((stack.airflow_home / "logs").rglob("*.log"))
    assert any(f"run_id={ui_run.run_id}" in str(p) for p in logs), "no task log of the run"
    for log in logs:
        places[str(log.relative_to(stack.airflow_home))] = log.read_text(errors="replace")
    with sqlite3.connect(stack.airflow_home / "airflow.db") as db:
        rows = db.execute("SELECT task_id, map_index, key, value FROM xcom").fetchall()
    assert any(key == "return_value" and task == "report" for task, _, key, _ in rows)
    for task, index, key, value in rows:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        places[f"XCom {task}[{index}] {key}"] = text

    leaks = [
        f"{name} in {place}"
        for place, text in places.items()
        for name, fragment in wanted.items()
        if fragment in text
    ]
    assert not leaks, leaks
