"""`make demo`: the upgrade DAG run by a real Airflow (`airflow standalone`) on the local sandbox.

    python scripts/demo.py up      # sandbox + Airflow + one DAG run followed to its end
    python scripts/demo.py stop    # stop the Airflow and the sandbox the demo started
    python scripts/demo.py status  # is the demo's Airflow up, and where

`up` leaves Airflow and the sandbox running so the run can be looked at in the UI; a second
`up` reuses both, re-seeds the sandbox (old revision everywhere) and runs the DAG again.
Where things go (all optional): DEMO_HOME (default out/demo: state, Airflow home, log),
DEMO_PORT (Airflow's API server and UI, default 8080), DEMO_CONF (JSON params on top of the
demo's), SANDBOX_HOME and SANDBOX_*_PORT (the sandbox, see sandbox/components.py).
Uses only the standard library; Airflow runs from the venv of the Python that runs this.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sandbox.cli import parse_exports
from sandbox.components import stop_group

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).with_name("airflow"))  # the venv's, beside this Python
PASSWORDS = "simple_auth_manager_passwords.json.generated"
SANDBOX = str(REPO / "sandbox" / "sandbox")
DAG_ID = "istio_canary_upgrade"
DAG_FILE = "istio_canary_upgrade.py"
USER = "admin"
# A demo-sized run: a short bake time, frequent checks over a short window. The sandbox's
# Prometheus scrapes every 1-2 s, so a 20 s window holds about ten samples.
DEMO_PARAMS: dict[str, Any] = {
    "bake_seconds": 20,
    "check_interval_seconds": 5,
    "metric_window": "20s",
    "failure_limit": 2,
    "rollout_timeout_seconds": 180,
}
TERMINAL = {"success", "failed", "skipped", "upstream_failed", "removed"}
ACTIVE = {"running", "deferred", "up_for_reschedule", "up_for_retry", "awaiting_input"}
# airflow standalone stops its scheduler, triggerer and api-server one after another.
AIRFLOW_STOP_GRACE = 20.0


class DemoError(RuntimeError):
    """The demo cannot go on; the message says what to look at."""


# --- where the demo keeps its things --------------------------------------------------------


@dataclass(frozen=True)
class Demo:
    """One demo installation: its folder, Airflow home and port (from the environment)."""

    home: Path
    port: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Demo:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("DEMO_HOME") or REPO / "out" / "demo").resolve()
        return cls(home=home, port=int(env.get("DEMO_PORT") or 8080))

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def log(self) -> Path:
        return self.home / "airflow.log"

    @property
    def state_file(self) -> Path:
        return self.home / "state.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def password_file(self) -> Path:
        return self.airflow_home / PASSWORDS

    def password(self) -> str:
        """The admin password `airflow standalone` generated (SimpleAuthManager)."""
        return generated_password(self.airflow_home, USER, self.log)


def generated_password(airflow_home: Path, user: str, log: Path) -> str:
    """The password SimpleAuthManager generated for `user` when Airflow first started."""
    path = airflow_home / PASSWORDS
    try:
        return str(json.loads(path.read_text())[user])
    except (OSError, ValueError, KeyError) as err:
        raise DemoError(
            f"no password for {user!r} in {path} ({err}); Airflow writes it on its first "
            f"start: see {log}"
        ) from err


@dataclass(frozen=True)
class State:
    """What `up` started, so that `stop` finds it again whatever the environment says then."""

    airflow_pid: int
    port: int
    sandbox_home: str
    sandbox_env: dict[str, str] = field(default_factory=dict)

    def save(self, demo: Demo) -> None:
        demo.state_file.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, demo: Demo) -> State | None:
        try:
            return cls(**json.loads(demo.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


# --- the sandbox ---------------------------------------------------------------------------


def sandbox_env_vars(env: dict[str, str]) -> dict[str, str]:
    """The sandbox's own settings from an environment (home and ports)."""
    return {k: v for k, v in env.items() if k.startswith("SANDBOX_")}


def sandbox_up(env: dict[str, str], extra_namespaces: int = 0) -> dict[str, str]:
    """Start the sandbox and converge it to the seeded state (old revision everywhere).

    `up --seed` is idempotent and also undoes an earlier demo: with the mesh already on the
    new revision it re-installs the old one, moves the tag back, restarts and removes the new
    revision, as `sandbox/sandbox reset` does.
    """
    argv = [SANDBOX, "up", "--seed", "--extra-namespaces", str(extra_namespaces)]
    out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        raise DemoError(f"sandbox/sandbox up --seed exited {out.returncode} (its log is above)")
    return parse_exports(out.stdout)


# --- Airflow -------------------------------------------------------------------------------


def airflow_env(demo: Demo, box: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    """The environment of `airflow standalone`: the venv first on PATH, the project's DAG,
    plugins and library, and kubernetes_default pointing at the sandbox."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in base.items() if not k.startswith(("AIRFLOW", "ISTIOCTL_SEARCH"))}
    env.update(
        {
            "PATH": f"{venv_bin}{os.pathsep}{base.get('PATH', '')}",
            "VIRTUAL_ENV": str(Path(venv_bin).parent),
            "PYTHONPATH": f"{REPO / 'include'}{os.pathsep}{REPO}",
            "AIRFLOW_HOME": str(demo.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            # What a trigger may point the worker at (README, "What a trigger may choose")
            "ISTIO_UPGRADE_PROMETHEUS_URLS": box["SANDBOX_PROMETHEUS_URL"],
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(demo.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{demo.url}/execution/",
            # The log servers of the scheduler and triggerer default to 8793/8794: derive
            # them from the demo's port so two demos (or the browser test) can run side by side.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(demo.port + 1),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(demo.port + 2),
            # Two cores: a few task processes at a time keep the sandbox responsive.
            "AIRFLOW__CORE__PARALLELISM": "6",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW_CONN_KUBERNETES_DEFAULT": kube_connection(box["KUBECONFIG"]),
        }
    )
    return env


def kube_connection(kubeconfig: str) -> str:
    """kubernetes_default as an AIRFLOW_CONN_ variable, pointing at a kubeconfig file."""
    # JSON boolean: the string "false" would count as true.
    extra = {"kube_config_path": kubeconfig, "in_cluster": False}
    return json.dumps({"conn_type": "kubernetes", "extra": extra})


def api_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=3) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def spawn_airflow(
    args: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    """`airflow <args>` in the background, in its own process group (stopping the group
    ends every component it starts), its output appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [AIRFLOW, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )


def start_airflow(demo: Demo, env: dict[str, str], timeout: float = 240.0) -> int:
    """Start `airflow standalone` in its own process group unless the demo's one runs."""
    state = State.load(demo)
    if state and _alive(state.airflow_pid) and api_healthy(demo.url):
        say(f"airflow: already running (pid {state.airflow_pid}) at {demo.url}")
        return state.airflow_pid
    if api_healthy(demo.url):
        raise DemoError(
            f"something else serves {demo.url}; stop it or pick another port: DEMO_PORT=28080"
        )
    demo.airflow_home.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    proc = spawn_airflow(["standalone"], env, demo.log)
    say(f"airflow: starting standalone (pid {proc.pid}), log {demo.log}")
    deadline = time.monotonic() + timeout
    while not api_healthy(demo.url):
        if proc.poll() is not None:
            raise DemoError(f"airflow standalone exited with {proc.returncode}; see {demo.log}")
        if time.monotonic() > deadline:
            stop_group(proc.pid, AIRFLOW_STOP_GRACE)
            raise DemoError(f"Airflow API not up after {timeout:.0f}s; see {demo.log}")
        time.sleep(1)
    say(f"airflow: API up at {demo.url} in {time.monotonic() - t0:.0f}s")
    return proc.pid


# --- the REST API --------------------------------------------------------------------------


class Api:
    """Airflow's public REST API (/api/v2) with a SimpleAuthManager token."""

    def __init__(self, url: str, token: str = "") -> None:
        self.url = url
        self.token = token

    @classmethod
    def login(cls, url: str, password: str, user: str = USER) -> Api:
        api = cls(url)
        body = api.call("POST", "/auth/token", {"username": user, "password": password})
        api.token = body["access_token"]
        return api

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        qs = f"?{urllib.parse.urlencode(query, doseq=True)}" if query else ""
        req = urllib.request.Request(
            f"{self.url}{path}{qs}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise ApiError(err.code, f"{method} {path}: HTTP {err.code} {detail}") from err

    def dag_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"))

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (pages of 100: a run may map 1,000 namespaces)."""
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
        found: list[dict[str, Any]] = []
        while True:
            page = self.call("GET", path, limit=100, offset=len(found))
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= int(page["total_entries"]):
                return found

    def xcom(self, run_id: str, task_id: str, key: str = "return_value") -> Any:
        out = self.call(
            "GET",
            f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            deserialize="true",
        )
        return out["value"]


class ApiError(DemoError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def wait_for_dag(api: Api, timeout: float = 180.0) -> None:
    """Wait until the DAG processor has parsed the DAG; fail at once on an import error."""
    deadline = time.monotonic() + timeout
    while True:
        errors = api.call("GET", "/api/v2/importErrors", limit=100)["import_errors"]
        ours = [e for e in errors if str(e.get("filename", "")).endswith(DAG_FILE)]
        if ours:
            raise DemoError(f"{DAG_FILE} does not import:\n{ours[0].get('stack_trace', '')}")
        try:
            api.call("GET", f"/api/v2/dags/{DAG_ID}")
            return
        except ApiError as err:
            if err.status != 404:
                raise
        if time.monotonic() > deadline:
            raise DemoError(f"DAG {DAG_ID} not parsed after {timeout:.0f}s; see the airflow log")
        time.sleep(2)


def trigger(api: Api, conf: dict[str, Any]) -> str:
    """Unpause the DAG and start a run with `conf`; returns its run id."""
    api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    busy = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", state=["running", "queued"], limit=5)[
        "dag_runs"
    ]
    if busy:
        raise DemoError(
            f"run {busy[0]['dag_run_id']} of {DAG_ID} is still {busy[0]['state']} (the DAG "
            "allows one run at a time): wait for it, mark it failed in the UI, or `make demo-stop`"
        )
    run = api.call(
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        {"logical_date": None, "conf": conf, "note": "make demo"},
    )
    return str(run["dag_run_id"])


# --- following a run -----------------------------------------------------------------------


def label(ti: dict[str, Any]) -> str:
    """`task_id` or `task_id[namespace]` for a mapped instance (its rendered map index)."""
    if ti["map_index"] < 0:
        return str(ti["task_id"])
    return f"{ti['task_id']}[{ti.get('rendered_map_index') or ti['map_index']}]"


@dataclass
class Follower:
    """Prints each step once when it starts and once when it ends (a mapped namespace once,
    when it ends, by its name), and why a task failed (from its log)."""

    out: TextIO
    explain: Callable[[dict[str, Any]], str] = lambda _ti: ""
    t0: float = field(default_factory=time.monotonic)
    started: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)
    not_run: set[str] = field(default_factory=set)

    def line(self, text: str) -> None:
        print(f"  {time.monotonic() - self.t0:5.0f}s  {text}", file=self.out, flush=True)

    def update(self, tis: list[dict[str, Any]]) -> None:
        for ti in sorted(tis, key=lambda t: (t.get("start_date") or "~", t["task_id"])):
            key = f"{ti['task_id']}#{ti['map_index']}"
            state = ti.get("state")
            mapped = ti["map_index"] >= 0
            # A mapped instance is named after it ran (map_index_template): report its end only.
            if state in ACTIVE and key not in self.started and not mapped:
                self.started.add(key)
                self.line(f"..  {label(ti)} {state}")
            if state not in TERMINAL or key in self.ended:
                continue
            self.ended.add(key)
            if state == "success":
                took = ti.get("duration")
                self.line(f"ok  {label(ti)}" + (f" ({took:.1f}s)" if took else ""))
            elif state == "skipped":
                self.line(f"--  {label(ti)} skipped")
            elif state == "upstream_failed":
                self.not_run.add(label(ti))  # summed up at the end, not one line each
            elif state != "skipped":
                self.line(f"!!  {label(ti)} {state.upper()}")
                why = self.explain(ti)
                if why:
                    self.line(f"    {why}")

    def finish(self) -> None:
        if self.not_run:
            self.line(f"--  {len(self.not_run)} steps not run (upstream failed)")


def failure_of(api: Api, run_id: str, ti: dict[str, Any]) -> str:
    """`ExcType: message` of a failed task instance, from its log (empty if not found)."""
    path = (
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}"
        f"/logs/{max(int(ti.get('try_number') or 1), 1)}"
    )
    query = {"full_content": "true"}
    if ti["map_index"] >= 0:
        query["map_index"] = str(ti["map_index"])
    try:
        entries = api.call("GET", path, **query).get("content") or []
    except (DemoError, OSError, ValueError, AttributeError):
        return ""
    details = [
        e["error_detail"][0]
        for e in (entries if isinstance(entries, list) else [])
        if isinstance(e, dict) and e.get("error_detail")
    ]
    if not details:
        return ""
    return f"{details[-1].get('exc_type', 'Error')}: {details[-1].get('exc_value', '')}"


def follow(
    api: Api, run_id: str, out: TextIO = sys.stdout, timeout: float = 1200.0, poll: float = 2.0
) -> str:
    """Print the run's progress until it ends; returns its final state."""
    follower = Follower(out, explain=lambda ti: failure_of(api, run_id, ti))
    deadline = time.monotonic() + timeout
    while True:
        state = str(api.dag_run(run_id)["state"])
        follower.update(api.task_instances(run_id))
        if state in ("success", "failed"):
            follower.finish()
            return state
        if time.monotonic() > deadline:
            raise DemoError(f"run {run_id} still {state} after {timeout:.0f}s; see the UI")
        time.sleep(poll)


def report_text(api: Api, run_id: str) -> str:
    """The run report (task `report`'s return value, field `text`), or why there is none."""
    try:
        value = api.xcom(run_id, "report")
    except ApiError as err:
        if err.status != 404:
            return f"(no report: {err})"
        tis = {t["task_id"]: t for t in api.task_instances(run_id)}
        state = tis.get("report", {}).get("state")
        if state == "skipped":
            return "(no report: task report skipped, as nothing ran against the cluster)"
        return f"(no report: task report ended {state}; see its log in the UI)"
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    return str(value.get("text", value)) if isinstance(value, dict) else str(value)


# --- commands ------------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


@contextlib.contextmanager
def timer(what: str) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    say(f"{what} in {time.monotonic() - t0:.0f}s")


def conf_for(box: dict[str, str], extra: str = "") -> dict[str, Any]:
    """The run's params: the sandbox's new revision and Prometheus, demo-sized timings, then
    `extra` (DEMO_CONF, a JSON object such as '{"require_approval": true}') on top."""
    example = """e.g. DEMO_CONF='{"bake_seconds": 60}'"""
    try:
        overrides = json.loads(extra) if extra.strip() else {}
    except ValueError as err:
        raise DemoError(f"DEMO_CONF={extra!r} is not JSON ({err}); {example}") from err
    if not isinstance(overrides, dict):
        raise DemoError(f"DEMO_CONF={extra!r} is not a JSON object; {example}")
    return {
        "target_revision": box["SANDBOX_NEW_REVISION"],
        "prometheus_url": box["SANDBOX_PROMETHEUS_URL"],
        **DEMO_PARAMS,
        **overrides,
    }


@dataclass(frozen=True)
class Stack:
    """A running demo: where its UI is, how to log in, and the sandbox it drives."""

    demo: Demo
    box: dict[str, str]
    pid: int

    def api(self) -> Api:
        return Api.login(self.demo.url, self.demo.password())


def running_stack(demo: Demo) -> Stack | None:
    """The demo that `up` left running (its Airflow answers), or None."""
    state = State.load(demo)
    if not (state and state.port == demo.port and _alive(state.airflow_pid)):
        return None
    if not api_healthy(demo.url):
        return None
    env = {**os.environ, **state.sandbox_env, "SANDBOX_HOME": state.sandbox_home}
    out = subprocess.run([SANDBOX, "env"], env=env, capture_output=True, text=True, check=True)
    return Stack(demo, parse_exports(out.stdout), state.airflow_pid)


def bring_up(demo: Demo, env: dict[str, str] | None = None, extra_namespaces: int = 0) -> Stack:
    """Sandbox seeded (with `extra_namespaces` more meshed namespaces), Airflow standalone up
    with the DAG parsed; nothing triggered yet."""
    env = dict(os.environ if env is None else env)
    demo.home.mkdir(parents=True, exist_ok=True)
    with timer("sandbox up and seeded"):
        box = sandbox_up(env, extra_namespaces)
    with timer("airflow ready"):
        pid = start_airflow(demo, airflow_env(demo, box, env))
        State(pid, demo.port, box["SANDBOX_HOME"], sandbox_env_vars(env)).save(demo)
        stack = Stack(demo, box, pid)
        wait_for_dag(stack.api())
    return stack


def run_once(stack: Stack, conf: dict[str, Any], out: TextIO = sys.stdout) -> tuple[str, str]:
    """Trigger one run with `conf` and follow it; returns (run id, final state)."""
    api = stack.api()
    run_id = trigger(api, conf)
    say(f"triggered {DAG_ID} run {run_id} with {json.dumps(conf)}")
    t0 = time.monotonic()
    state = follow(api, run_id, out)
    say(f"run {run_id} ended {state.upper()} in {time.monotonic() - t0:.0f}s")
    return run_id, state


def stop_vars(demo: Demo) -> str:
    """The make variables `make demo-stop` needs to find this demo (none for the default)."""
    default = Demo.from_env({})
    out = "" if demo.home == default.home else f" DEMO_HOME={demo.home}"
    return out + ("" if demo.port == default.port else f" DEMO_PORT={demo.port}")


def cmd_up(demo: Demo) -> int:
    t0 = time.monotonic()
    stack = bring_up(demo)
    run_id, state = run_once(stack, conf_for(stack.box, os.environ.get("DEMO_CONF", "")))
    print(f"\n{report_text(stack.api(), run_id)}\n", flush=True)
    say(f"total {time.monotonic() - t0:.0f}s")
    print(
        f"""
  Airflow UI   {demo.url}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id)}
  login        {USER} / {demo.password()}   (from {demo.password_file})
  kubectl      KUBECONFIG={stack.box["KUBECONFIG"]} {stack.box["SANDBOX_KUBECTL"]} get pods -A
  Airflow log  {demo.log}
  stop it all  make demo-stop{stop_vars(demo)}
""",
        flush=True,
    )
    return 0 if state == "success" else 1


def stop_demo(demo: Demo, purge: bool = False, env: Mapping[str, str] | None = None) -> None:
    """Stop the demo's Airflow and its sandbox (`purge`: also delete the sandbox's state).

    `env` is the environment the demo was started with: without a state file (a start that
    failed early) it is the only record of which sandbox is the demo's, and guessing the
    default one would stop, or purge, a sandbox that is not ours.
    """
    state = State.load(demo)
    if state and _alive(state.airflow_pid):
        stop_group(state.airflow_pid, AIRFLOW_STOP_GRACE)
        say(f"stopped airflow standalone (pid {state.airflow_pid})")
    else:
        say("airflow: not running")
    run_env = {**os.environ, **(env or {}), **(state.sandbox_env if state else {})}
    if state:
        run_env["SANDBOX_HOME"] = state.sandbox_home
    down = [SANDBOX, "down", *(["--purge"] if purge else [])]
    subprocess.run(down, env=run_env, check=False)
    demo.state_file.unlink(missing_ok=True)


def cmd_stop(demo: Demo) -> int:
    stop_demo(demo)
    return 0


def cmd_status(demo: Demo) -> int:
    state = State.load(demo)
    up = bool(state and _alive(state.airflow_pid) and api_healthy(demo.url))
    print(f"airflow  {'up at ' + demo.url if up else 'down'}")
    env = {**os.environ, **(state.sandbox_env if state else {})}
    sandbox_up_ = subprocess.run([SANDBOX, "status"], env=env, check=False).returncode == 0
    return 0 if up and sandbox_up_ else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "stop", "status"])
    args = parser.parse_args(argv)
    demo = Demo.from_env()
    try:
        return {"up": cmd_up, "stop": cmd_stop, "status": cmd_status}[args.command](demo)
    except DemoError as err:
        print(f"[demo] error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
