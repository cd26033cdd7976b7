"""Fixtures of the tests under a real Airflow (conftest.py re-exports them): a sandbox and
`airflow standalone` (real scheduler, triggerer, LocalExecutor, API server) of this package's
own, one finished upgrade run, and a logged-in headless Chromium (Debian's /usr/bin/chromium
driven by Playwright).

The stack runs on ports of its own (the default sandbox and a demo are never touched), with
EXTRA_NAMESPACES more meshed namespaces so the waves have several rounds, and is stopped
after this package's tests (not at the end of the whole session, so it does not idle through
the other tests on our two cores).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import demo  # noqa: E402 - scripts/ is not a package
from xcom_values import plain  # noqa: E402

OUT = REPO / "out" / "standalone"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Ports of the package's own stack: apart from the default sandbox (1xxxx), a demo and the
# benchmarks, and below Linux's ephemeral range (32768-60999), where a client's outgoing
# connection may already hold the port (seen: the apiserver's connection to etcd on 39090).
OWN_PORTS = {
    "SANDBOX_ETCD_PORT": "22379",  # and 22380
    "SANDBOX_APISERVER_PORT": "26443",
    "SANDBOX_KWOK_PORT": "30247",
    "SANDBOX_KUBELET_PORT": "30250",
    "SANDBOX_TRAFFIC_PORT": "29464",
    "SANDBOX_PROMETHEUS_PORT": "29090",
}
OWN_AIRFLOW_PORT = 28080  # and 28081, 28082 for the log servers
# A quick run: what tests/dags uses, enough for a finished grid with mapped namespaces.
FAST_PARAMS: dict[str, Any] = {
    "bake_seconds": 6,
    "check_interval_seconds": 2,
    "failure_limit": 2,
    "metric_window": "10s",
    "rollout_timeout_seconds": 120,
}


EXTRA_NAMESPACES = 4  # mesh-0000..0003 beside foo, bar, baz and qux


@dataclass
class Stack:
    """The package's sandbox and Airflow: where, how to log in, and how to run the DAG."""

    url: str
    password: str
    api: demo.Api
    box: dict[str, str]
    progress: io.StringIO
    airflow_home: Path  # task and trigger logs, airflow.db (XComs), airflow.cfg
    # Airflow processes a test started beside standalone's (a second triggerer), stopped with
    # the stack
    extra_pids: list[int] = field(default_factory=list)

    def start(self, **params: Any) -> str:
        """Trigger a run with the fast params and `params` on top; returns its run id."""
        return demo.trigger(self.api, {**demo.conf_for(self.box), **FAST_PARAMS, **params})

    def finished(self, run_id: str, timeout: float = 600.0) -> str:
        """Wait for the run to end; returns its state (the progress goes to `progress`)."""
        return demo.follow(self.api, run_id, out=self.progress, timeout=timeout)

    def run(self, **params: Any) -> tuple[str, str]:
        run_id = self.start(**params)
        return run_id, self.finished(run_id)

    def states(self, run_id: str) -> dict[str, str]:
        """`task_id` or `task_id[map_index]` -> state of every task instance of the run."""
        return {
            (t["task_id"] if t["map_index"] < 0 else f"{t['task_id']}[{t['map_index']}]"): str(
                t["state"]
            )
            for t in self.api.task_instances(run_id)
        }

    def clear(self, run_id: str, task_ids: list[str]) -> list[str]:
        """The UI's "Clear" of tasks with their downstream tasks (the run goes back to
        running); the task ids it cleared (a mapped task once per map index)."""
        cleared = self.api.call(
            "POST",
            f"/api/v2/dags/{demo.DAG_ID}/clearTaskInstances",
            {
                "dag_run_id": run_id,
                "task_ids": task_ids,
                "only_failed": False,
                "include_downstream": True,
                "reset_dag_runs": True,
                "dry_run": False,
            },
        )
        return sorted(t["task_id"] for t in cleared["task_instances"])

    def xcom(self, run_id: str, task_id: str, key: str = "return_value", index: int = -1) -> Any:
        path = f"/api/v2/dags/{demo.DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"
        return plain(self.api.call("GET", f"{path}/xcomEntries/{key}", map_index=index)["value"])


@dataclass
class UiRun:
    """A finished run of the DAG on the stack, for the UI to show."""

    url: str
    password: str
    run_id: str
    state: str


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    """This package's own sandbox and `airflow standalone`, stopped after its tests."""
    home = Path(tempfile.mkdtemp(prefix="standalone-"))
    env = {**os.environ, **OWN_PORTS, "SANDBOX_HOME": str(home / "sandbox")}
    env.pop("SANDBOX_PROMETHEUS_URL", None)
    own = demo.Demo(home=home, port=OWN_AIRFLOW_PORT)
    stack: Stack | None = None
    t0 = time.monotonic()
    try:
        up = demo.bring_up(own, env, extra_namespaces=EXTRA_NAMESPACES)
        print(f"\n[standalone] stack up in {time.monotonic() - t0:.0f}s")
        stack = Stack(own.url, own.password(), up.api(), up.box, io.StringIO(), own.airflow_home)
        yield stack
    finally:
        for pid in stack.extra_pids if stack else []:
            demo.stop_group(pid, demo.AIRFLOW_STOP_GRACE)
        if own.log.exists():
            OUT.mkdir(parents=True, exist_ok=True)
            shutil.copy(own.log, OUT / "airflow.log")
        demo.stop_demo(own, purge=True, env=env)
        shutil.rmtree(home, ignore_errors=True)


def reseed(stack: Stack) -> None:
    """Back to the procedure's starting state (old revision everywhere)."""
    env = {**os.environ, **OWN_PORTS, "SANDBOX_HOME": stack.box["SANDBOX_HOME"]}
    demo.sandbox_up(env, EXTRA_NAMESPACES)


@pytest.fixture(scope="package")
def ui_run(stack: Stack) -> UiRun:
    """One whole upgrade from the seeded state, two namespaces a wave, followed to its end."""
    reseed(stack)
    run_id, state = stack.run(wave_concurrency=2)
    return UiRun(stack.url, stack.password, run_id, state)


@pytest.fixture(scope="package")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian Chromium with a fresh profile (never a Playwright-downloaded browser)."""
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: install it with `make browser-deps` (Debian chromium)")
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 900},
        )
        context.set_default_timeout(30_000)
        yield context
        context.close()


@pytest.fixture(scope="package")
def page(browser_context: Any, ui_run: UiRun) -> Any:
    """A page logged in through the UI's own sign-in form (SimpleAuthManager)."""
    from playwright.sync_api import expect

    pg = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    pg.goto(f"{ui_run.url}/")
    expect(pg.get_by_text("Sign into Airflow")).to_be_visible()
    pg.get_by_label("Username").fill(demo.USER)
    pg.get_by_label("Password").fill(ui_run.password)
    pg.get_by_role("button", name="Sign in").click()
    expect(pg.get_by_test_id("nav-dags-link")).to_be_visible()
    return pg
