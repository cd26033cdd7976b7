"""docker-compose.yaml's Airflow, as processes on this machine: PostgreSQL, Redis, and the
api-server, scheduler, dag-processor, triggerer and two Celery workers each on its own.

    python scripts/distributed_stack.py up      # start it all (and the sandbox), DAG parsed
    python scripts/distributed_stack.py stop    # stop what `up` started
    python scripts/distributed_stack.py status

Containers do not run on our machines, so `make distributed-test` runs the compose file's
deployment this way: the same commands, with the `AIRFLOW__...` settings read from
docker-compose.yaml itself (`compose_env`), where only what names a container changes (the
Postgres, Redis and api-server hosts become 127.0.0.1 and our ports, paths in the image become
the repo's). Each Airflow process has its own working directory and TMPDIR, so nothing can
rely on a file another process wrote. PostgreSQL and Redis come from Debian's packages.

Where things go (all optional): DIST_HOME (default out/distributed), DIST_PORT (api-server,
default 28280), DIST_PG_PORT (25432), DIST_REDIS_PORT (26379), ISTIO_UPGRADE_WINDOWS and
ISTIO_UPGRADE_PARAM_DEFAULTS (passed on to every Airflow process, as compose would).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo
from demo import REPO, DemoError, say, timer

from sandbox import procfs
from sandbox.components import stop_groups

COMPOSE_FILE = REPO / "docker-compose.yaml"
USER = "airflow"  # compose's SIMPLE_AUTH_MANAGER_USERS
PG_BIN = Path("/usr/lib/postgresql")
# Settings a deployment passes to the DAG (config.py), handed on from our environment.
DEPLOYMENT_ENV = ("ISTIO_UPGRADE_WINDOWS", "ISTIO_UPGRADE_PARAM_DEFAULTS")
WORKERS = ("worker-1", "worker-2")
STOP_GRACE = 20.0


def compose_env(path: Path = COMPOSE_FILE) -> dict[str, str]:
    """The environment every Airflow service of the compose file gets (x-airflow-common),
    with `${VAR:-default}` read as its default."""
    common = yaml.safe_load(path.read_text())["x-airflow-common"]["environment"]
    return {
        str(k): re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)).strip() for k, v in common.items()
    }


@dataclass(frozen=True)
class Dist:
    """One local deployment: its folder and ports (from the environment)."""

    home: Path
    port: int
    pg_port: int
    redis_port: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Dist:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("DIST_HOME") or REPO / "out" / "distributed").resolve()
        return cls(
            home,
            int(env.get("DIST_PORT") or 28280),
            int(env.get("DIST_PG_PORT") or 25432),
            int(env.get("DIST_REDIS_PORT") or 26379),
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def state_file(self) -> Path:
        return self.home / "state.json"

    def log(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def password(self) -> str:
        return demo.generated_password(self.airflow_home, USER, self.log("api-server"))

    def api(self) -> demo.Api:
        return demo.Api.login(self.url, self.password(), USER)


def local_env(
    dist: Dist, box: Mapping[str, str], base: Mapping[str, str], compose: Mapping[str, str]
) -> dict[str, str]:
    """compose's environment with its container names and image paths made local."""
    hosts = {  # where compose's containers are, here
        "@postgres/": f"@127.0.0.1:{dist.pg_port}/",
        "@redis:6379/": f"@127.0.0.1:{dist.redis_port}/",
        "http://airflow-apiserver:8080/": f"{dist.url}/",
    }

    def here(value: str) -> str:
        for there, local in hosts.items():
            value = value.replace(there, local)
        return value

    local = {
        **{k: here(v) for k, v in compose.items()},
        "PYTHONPATH": f"{REPO / 'include'}{os.pathsep}{REPO}",
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": demo.kube_connection(box["KUBECONFIG"]),
        "ISTIO_UPGRADE_PROMETHEUS_URLS": box["SANDBOX_PROMETHEUS_URL"],
    }
    # The image's istioctl folder; here the sandbox's istioctl builds are found as in the demo.
    local.pop("ISTIOCTL_SEARCH_PATH", None)
    venv_bin = str(Path(sys.executable).parent)
    keep = {k: v for k, v in base.items() if not k.startswith(("AIRFLOW", "ISTIO"))}
    passed = {k: base[k] for k in DEPLOYMENT_ENV if base.get(k)}
    return {
        **keep,
        **local,
        **passed,
        "PATH": f"{venv_bin}{os.pathsep}{base.get('PATH', '')}",
        "AIRFLOW_HOME": str(dist.airflow_home),
        # The image's /opt/airflow/{dags,plugins} are the repo's folders.
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        # Containers each have their own ports; processes on one host need their own.
        "AIRFLOW__API__PORT": str(dist.port),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(dist.port + 1),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(dist.port + 2),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(dist.port + 3),
    }


# --- PostgreSQL and Redis -------------------------------------------------------------------


def pg_bin(tool: str) -> str:
    found = sorted(PG_BIN.glob(f"*/bin/{tool}"))
    if not found:
        raise DemoError(f"no PostgreSQL {tool} under {PG_BIN}: apt-get install postgresql")
    return str(found[-1])


def as_postgres(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """PostgreSQL refuses to run as root: its tools run as the package's `postgres` user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *argv], text=True, capture_output=True, check=False, **kw)


def start_postgres(dist: Dist) -> None:
    """A cluster of its own with user and database `airflow` (as compose's postgres)."""
    data = dist.home / "pg"
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        out = as_postgres([pg_bin("initdb"), "-D", str(data), "-U", USER, "--auth=trust"])
        if out.returncode != 0:
            raise DemoError(f"initdb failed: {out.stderr}")
    options = f"-c listen_addresses=127.0.0.1 -p {dist.pg_port} -c unix_socket_directories=''"
    log = dist.log("postgres")
    if os.geteuid() == 0:
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    out = as_postgres(
        [pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]
    )
    if out.returncode != 0 and "another server might be running" not in out.stderr:
        raise DemoError(f"postgres did not start: {out.stderr} (log {log})")
    probe = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(dist.pg_port), "-U", USER, "-d"]
    if (
        as_postgres(
            [*probe, "postgres", "-tAc", "SELECT 1 FROM pg_database WHERE datname='airflow'"]
        ).stdout.strip()
        != "1"
    ):
        out = as_postgres([*probe, "postgres", "-c", "CREATE DATABASE airflow"])
        if out.returncode != 0:
            raise DemoError(f"could not create database airflow: {out.stderr}")


def stop_postgres(dist: Dist) -> None:
    data = dist.home / "pg"
    if (data / "postmaster.pid").exists():
        as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])


def start_redis(dist: Dist) -> int:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(dist.redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(dist.home),
        ],
        stdout=open(dist.log("redis"), "ab"),  # noqa: SIM115 - the child keeps it open
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc.pid


# --- Airflow --------------------------------------------------------------------------------


def components(dist: Dist) -> dict[str, list[str]]:
    """Each compose service's command; the workers twice (compose scales one service)."""
    out = {
        "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(dist.port)],
        "scheduler": ["scheduler"],
        "dag-processor": ["dag-processor"],
        "triggerer": ["triggerer"],
    }
    for name in WORKERS:
        pid = dist.home / "run" / name / "worker.pid"
        worker = ["celery", "worker", "--celery-hostname", f"{name}@%h", "--pid", str(pid)]
        out[name] = [*worker, "--concurrency", "4"]
    # One log server for both: they share the log folder, and one port on one host.
    out[WORKERS[-1]].append("--skip-serve-logs")
    return out


def spawn(dist: Dist, name: str, argv: list[str], env: Mapping[str, str]) -> int:
    """`airflow <argv>` in its own process group, working directory and TMPDIR."""
    cwd = dist.home / "run" / name
    (cwd / "tmp").mkdir(parents=True, exist_ok=True)
    env = {**env, "TMPDIR": str(cwd / "tmp")}
    return demo.spawn_airflow(argv, env, dist.log(name), cwd).pid


@dataclass
class State:
    """What `up` started, for `stop` and for tests that stop and restart a component."""

    pids: dict[str, int] = field(default_factory=dict)
    box: dict[str, str] = field(default_factory=dict)  # the sandbox's exports
    env: dict[str, str] = field(default_factory=dict)  # what the Airflow processes get
    sandbox_env: dict[str, str] = field(default_factory=dict)  # its home and ports

    def save(self, dist: Dist) -> None:
        dist.state_file.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, dist: Dist) -> State:
        try:
            return cls(**json.loads(dist.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return cls()


def reseed(dist: Dist) -> None:
    """The sandbox back to the procedure's starting state (old revision everywhere)."""
    demo.sandbox_up({**os.environ, **State.load(dist).sandbox_env})


def component_of(dist: Dist, pid: int) -> str | None:
    """The component whose process group `pid` is in or descends from (a task's runner has
    a group of its own under its worker's)."""
    groups = {leader: name for name, leader in State.load(dist).pids.items()}
    table = procfs.stats()
    while pid in table:
        if table[pid].group in groups:
            return groups[table[pid].group]
        pid = table[pid].parent
    return None


def kill(dist: Dist, name: str) -> None:
    """SIGKILL a component and every process it started, as a lost host would end them: its
    process group, and the groups of its descendants (each task runs in one of its own)."""
    leader = State.load(dist).pids[name]
    table = procfs.stats()
    in_group = [pid for pid, s in table.items() if s.group == leader]
    doomed = procfs.descendants(in_group, table)
    for group in {leader} | {table[pid].group for pid in doomed}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def restart(dist: Dist, name: str) -> int:
    """Start a component again with the environment `up` gave it (after a test killed it)."""
    state = State.load(dist)
    state.pids[name] = spawn(dist, name, components(dist)[name], state.env)
    state.save(dist)
    return state.pids[name]


def up(dist: Dist, env: Mapping[str, str] | None = None) -> State:
    """Sandbox seeded, PostgreSQL and Redis, the database migrated, every component started
    and the DAG parsed; nothing triggered."""
    base = dict(os.environ if env is None else env)
    (dist.home / "logs").mkdir(parents=True, exist_ok=True)
    state = State.load(dist)
    with timer("sandbox up and seeded"):
        state.box = demo.sandbox_up(base)
    state.sandbox_env = {**demo.sandbox_env_vars(base), "SANDBOX_HOME": state.box["SANDBOX_HOME"]}
    with timer("postgres and redis"):
        start_postgres(dist)
        state.pids["redis"] = start_redis(dist)
    state.env = local_env(dist, state.box, base, compose_env())
    state.save(dist)
    with timer("airflow db migrate"):
        out = subprocess.run(
            [demo.AIRFLOW, "db", "migrate"],
            env=state.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise DemoError(f"airflow db migrate failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    with timer("airflow components up"):
        for name, argv in components(dist).items():
            state.pids[name] = spawn(dist, name, argv, state.env)
        state.save(dist)
        deadline = time.monotonic() + 180
        while not demo.api_healthy(dist.url):
            if time.monotonic() > deadline:
                raise DemoError(f"api-server not up after 180s; see {dist.log('api-server')}")
            time.sleep(1)
        demo.wait_for_dag(dist.api())
    return state


def stop(dist: Dist, purge: bool = False) -> None:
    """Stop what `up` started (`purge`: also delete the database and the sandbox's state)."""
    state = State.load(dist)
    airflow = [pid for name, pid in state.pids.items() if name != "redis" and demo._alive(pid)]
    stop_groups(airflow, STOP_GRACE)
    if "redis" in state.pids and demo._alive(state.pids["redis"]):
        stop_groups([state.pids["redis"]], 5)
    stop_postgres(dist)
    if state.sandbox_env:
        down = [demo.SANDBOX, "down", *(["--purge"] if purge else [])]
        subprocess.run(down, env={**os.environ, **state.sandbox_env}, check=False)
    dist.state_file.unlink(missing_ok=True)
    if purge:
        shutil.rmtree(dist.home / "pg", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/distributed_stack.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["up", "stop", "status"])
    args = parser.parse_args(argv)
    dist = Dist.from_env()
    try:
        if args.command == "up":
            up(dist)
            say(f"up: {dist.url} (login {USER} / {dist.password()}); stop: {sys.argv[0]} stop")
        elif args.command == "stop":
            stop(dist)
        else:
            alive = {n: demo._alive(p) for n, p in State.load(dist).pids.items()}
            print(json.dumps(alive, indent=1))
            return 0 if alive and all(alive.values()) else 1
    except DemoError as err:
        print(f"[distributed] error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
