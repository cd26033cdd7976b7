"""Fixtures of the browser check (conftest.py re-exports them): a running Airflow with the
DAG and one finished upgrade run, and a logged-in headless Chromium (Debian's
/usr/bin/chromium driven by Playwright).

A demo left running by `make demo` is reused when it has a successful run; otherwise the
session starts its own sandbox and `airflow standalone` on ports of their own (so the default
sandbox and a demo are never touched), runs the DAG once with fast params, and stops both
after the module (not at the end of the whole session, so they do not idle through the
other tests on our two cores).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import demo  # noqa: E402 - scripts/ is not a package

OUT = REPO / "out" / "browser"
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
# Ports of the session's own stack: apart from the default sandbox (1xxxx) and a demo.
OWN_PORTS = {
    "SANDBOX_ETCD_PORT": "32379",  # and 32380
    "SANDBOX_APISERVER_PORT": "36443",
    "SANDBOX_KWOK_PORT": "40247",
    "SANDBOX_KUBELET_PORT": "40250",
    "SANDBOX_TRAFFIC_PORT": "39464",
    "SANDBOX_PROMETHEUS_PORT": "39090",
}
OWN_AIRFLOW_PORT = 38080  # and 38081, 38082 for the log servers
# A quick run: what tests/dags uses, enough for a finished grid with mapped namespaces.
FAST_PARAMS: dict[str, Any] = {
    "bake_seconds": 6,
    "check_interval_seconds": 2,
    "failure_limit": 2,
    "metric_window": "10s",
    "rollout_timeout_seconds": 120,
}


@dataclass
class UiRun:
    """An Airflow UI with a run of the DAG: where, how to log in, and which run."""

    url: str
    password: str
    api: demo.Api
    run_id: str
    reused: bool
    progress: io.StringIO

    def finished(self, timeout: float = 600.0) -> str:
        """Wait for the run to end; returns its state (the progress goes to `progress`)."""
        return demo.follow(self.api, self.run_id, out=self.progress, timeout=timeout)


def _reusable_demo() -> UiRun | None:
    """A running `make demo` of this checkout with a successful run of the DAG, or None."""
    d = demo.Demo.from_env()
    if demo.running_stack(d) is None:
        return None
    api = demo.Api.login(d.url, d.password())
    # Only a demo of this checkout: the form must show the params declared here.
    fileloc = api.call("GET", f"/api/v2/dags/{demo.DAG_ID}/details")["fileloc"]
    if Path(fileloc).parent != REPO / "dags":
        print(f"\n[browser] not reusing the demo at {d.url}: it runs {fileloc}")
        return None
    runs = api.call(
        "GET",
        f"/api/v2/dags/{demo.DAG_ID}/dagRuns",
        state=["success"],
        order_by="-start_date",
        limit=1,
    )["dag_runs"]
    if not runs:
        return None
    return UiRun(d.url, d.password(), api, runs[0]["dag_run_id"], True, io.StringIO())


@pytest.fixture(scope="module")
def ui_run() -> Iterator[UiRun]:
    """Reuse a finished demo run, or start a stack of our own and trigger a run on it."""
    reused = _reusable_demo()
    if reused is not None:
        print(f"\n[browser] reusing the running demo at {reused.url}, run {reused.run_id}")
        yield reused
        return
    home = Path(tempfile.mkdtemp(prefix="browser-ui-"))
    env = {**os.environ, **OWN_PORTS, "SANDBOX_HOME": str(home / "sandbox")}
    env.pop("SANDBOX_PROMETHEUS_URL", None)
    own = demo.Demo(home=home, port=OWN_AIRFLOW_PORT)
    t0 = time.monotonic()
    try:
        stack = demo.bring_up(own, env)
        api = stack.api()
        conf = {**demo.conf_for(stack.box), **FAST_PARAMS}
        run_id = demo.trigger(api, conf)
        print(f"\n[browser] own stack up in {time.monotonic() - t0:.0f}s; run {run_id}")
        yield UiRun(own.url, own.password(), api, run_id, False, io.StringIO())
    finally:
        if own.log.exists():
            OUT.mkdir(parents=True, exist_ok=True)
            shutil.copy(own.log, OUT / "airflow.log")
        demo.stop_demo(own, purge=True, env=env)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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
