"""docker-compose.yaml and docker/Dockerfile, read statically: no Docker engine needed."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import pytest
import yaml

from istio_upgrade import istioctl

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
REQUIREMENTS = ROOT / "requirements.txt"

# The services of Airflow 3's documented docker-compose.yaml (flower and airflow-cli are
# optional profiles there and here).
OFFICIAL_SERVICES = {
    "postgres": None,
    "redis": None,
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer": "triggerer",
    "airflow-init": None,
}
AIRFLOW_SERVICES = [s for s in OFFICIAL_SERVICES if s.startswith("airflow-")]
# Bind sources that come from the environment, not the repo: the only ones not checked.
FROM_ENV = {"${KUBECONFIG_PATH:-~/.kube/config}"}
KUBECONFIG_TARGET = "/home/airflow/.kube/config"
REPO_MOUNTS = {
    "./dags": "/opt/airflow/dags",
    "./plugins": "/opt/airflow/plugins",
    "./include": "/opt/airflow/include",
}


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), f"{COMPOSE_FILE.name} is not a YAML mapping"
    return data


COMPOSE = load_compose()
SERVICES: dict[str, Any] = COMPOSE["services"]


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's bind mounts, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
            continue
        # Short syntax; a `${VAR:-default}` source may itself contain colons.
        match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(\S+))?", volume)
        assert match, f"cannot read volume {volume!r}"
        source, target, mode = match.groups()
        if source.startswith((".", "/", "~", "$")):  # anything else names a volume
            mounts.append((source, target, "ro" in (mode or "").split(",")))
    return mounts


def source_problem(service: str, source: str, root: Path) -> str | None:
    """Why a bind source outside FROM_ENV is wrong for the repo at `root`, or None."""
    if not source.startswith(("./", "../")):
        return f"{service} mounts {source}: use a path relative to the repo, or list it in FROM_ENV"
    if not (root / source).exists():
        return (
            f"{service} mounts {source}, which is not in the repo: compose would create it "
            f"empty and root-owned; create it (with a .gitkeep) or drop the mount"
        )
    return None


def env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", "", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def arg_default(name: str) -> str:
    return next(
        a.split("=", 1)[1]
        for i, a in instructions(DOCKERFILE)
        if i == "ARG" and a.startswith(f"{name}=")
    )


def pinned(requirements: str, package: str) -> str:
    """The exact version a lock pins for `package`."""
    match = re.search(rf"^{re.escape(package)}==([^\s;]+)", requirements, re.MULTILINE)
    assert match, f"{package} is not pinned with == in the lock"
    return match.group(1)


# --- the compose file -----------------------------------------------------------------


def test_compose_parses_with_the_official_services() -> None:
    missing = sorted(set(OFFICIAL_SERVICES) - set(SERVICES))
    assert not missing, f"docker-compose.yaml lacks the official services {missing}"


@pytest.mark.parametrize(("service", "command"), [
    pytest.param(s, c, id=s) for s, c in OFFICIAL_SERVICES.items() if c
])  # fmt: skip
def test_airflow_service_runs_its_component(service: str, command: str) -> None:
    assert SERVICES[service]["command"] == command


def test_api_server_listens_on_8080() -> None:
    assert "8080:8080" in SERVICES["airflow-apiserver"]["ports"]


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_services_use_the_project_image(service: str) -> None:
    build = SERVICES[service]["build"]
    assert (build["context"], build["dockerfile"]) == (".", "docker/Dockerfile")


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_celery_executor_without_examples(service: str) -> None:
    assert env(service)["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env(service)["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"


@pytest.mark.parametrize(("service", "source"), [
    pytest.param(name, source, id=f"{name}:{source}")
    for name, service in SERVICES.items()
    for source, _, _ in bind_mounts(service)
    if source not in FROM_ENV  # the kubeconfig comes from the environment, not the repo
])  # fmt: skip
def test_bind_mount_source_exists(service: str, source: str) -> None:
    problem = source_problem(service, source, ROOT)
    assert problem is None, problem


def test_bad_mount_sources_are_caught(tmp_path: Path) -> None:
    (tmp_path / "dags").mkdir()
    service = {"volumes": [
        "./dags:/opt/airflow/dags", "./nope:/opt/nope:ro", "named:/data", "/etc:/host-etc",
        {"type": "bind", "source": "./gone", "target": "/gone"},
    ]}  # fmt: skip
    problems = [source_problem("x", s, tmp_path) for s, _, _ in bind_mounts(service)]
    assert [p is not None for p in problems] == [False, True, True, True]


def test_only_listed_mounts_come_from_the_environment() -> None:
    sources = {s for service in SERVICES.values() for s, _, _ in bind_mounts(service)}
    assert sources >= FROM_ENV, "FROM_ENV names a mount the compose file no longer has"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_repo_folders_and_kubeconfig_are_mounted(service: str) -> None:
    mounts = {source: (target, ro) for source, target, ro in bind_mounts(SERVICES[service])}
    for source, target in REPO_MOUNTS.items():
        assert mounts.get(source, (None,))[0] == target, f"{service} does not mount {source}"
    kubeconfig = mounts.get("${KUBECONFIG_PATH:-~/.kube/config}")
    assert kubeconfig == (KUBECONFIG_TARGET, True), f"{service}: kubeconfig not mounted read-only"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_include_is_on_pythonpath(service: str) -> None:
    assert REPO_MOUNTS["./include"] in env(service)["PYTHONPATH"].split(":")


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_kubernetes_connection_is_json_with_boolean_in_cluster(service: str) -> None:
    conn = json.loads(env(service)["AIRFLOW_CONN_KUBERNETES_DEFAULT"])
    assert conn["conn_type"] == "kubernetes"
    # A string "false" would count as true in the provider: it must be the JSON literal.
    assert conn["extra"]["in_cluster"] is False
    assert conn["extra"]["kube_config_path"] == KUBECONFIG_TARGET


# --- the image ------------------------------------------------------------------------


def test_image_installs_exactly_the_lock_the_venv_uses() -> None:
    steps = instructions(DOCKERFILE)
    installs = [shlex.split(a) for i, a in steps if i == "RUN" and "pip install" in a]
    assert len(installs) == 1, "the image should install its Python packages in one step"
    argv = installs[0]
    files = [argv[i + 1] for i, a in enumerate(argv) if a in ("-r", "--requirement")]
    extra = [a for a in argv[argv.index("install") + 1 :] if not a.startswith("-")]
    extra = [a for a in extra if a not in files]
    assert len(files) == 1, f"pip installs {files}, expected the one lock"
    # The only other requirement allowed keeps the image's own Airflow version.
    assert extra == ["apache-airflow==${AIRFLOW_VERSION}"], f"pip also installs {extra}"
    copies = {
        dest: src
        for i, a in steps
        if i == "COPY" and not a.startswith("--from")
        for src, dest in [a.split()]
    }
    assert copies.get(files[0]) == "requirements.txt", f"{files[0]} is not the repo's lock"
    context = ROOT / SERVICES["airflow-worker"]["build"]["context"]
    assert (context / copies[files[0]]).resolve() == REQUIREMENTS


def test_build_context_sends_the_lock() -> None:
    # BuildKit reads <Dockerfile>.dockerignore; the last matching pattern wins.
    ignored = False
    for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines():
        pattern = line.strip()
        if pattern and not pattern.startswith("#"):
            negated = pattern.startswith("!")
            if fnmatch.fnmatch("requirements.txt", pattern.lstrip("!")):
                ignored = not negated
    assert not ignored, "docker/Dockerfile.dockerignore keeps requirements.txt out of the build"


def test_image_airflow_is_the_locked_airflow() -> None:
    base = next(a for i, a in instructions(DOCKERFILE) if i == "FROM" and "airflow" in a)
    match = re.fullmatch(r"apache/airflow:(\S+)-python(\d+\.\d+)", base)
    assert match, f"cannot read the Airflow version from FROM {base}"
    image_airflow, image_python = match.groups()
    lock = REQUIREMENTS.read_text()
    assert image_airflow == pinned(lock, "apache-airflow") == installed_version("apache-airflow")
    # The lock is resolved for one Python version (its header); the image must run that one.
    locked_python = re.search(r"--python-version (\S+)", lock)
    assert locked_python and locked_python.group(1) == image_python


def test_istioctl_lands_where_the_dag_looks(tmp_path: Path, monkeypatch: Any) -> None:
    steps = instructions(DOCKERFILE)
    assert ("FROM", "docker.io/istio/istioctl:${ISTIO_VERSION} AS istioctl") in steps
    copy = next(a for i, a in steps if i == "COPY" and a.startswith("--from=istioctl"))
    _, source, dest = copy.split()
    assert source == "/usr/local/bin/istioctl"  # the official image's entrypoint binary
    version = arg_default("ISTIO_VERSION")
    assert SERVICES["airflow-worker"]["build"]["args"]["ISTIO_VERSION"] == (
        f"${{ISTIO_VERSION:-{version}}}"
    )
    # Lay the image's path out in a temporary root and let the DAG's own lookup find it.
    binary = tmp_path / dest.replace("${ISTIO_VERSION}", version).lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.touch()
    search = env("airflow-worker")["ISTIOCTL_SEARCH_PATH"]
    monkeypatch.setenv(
        istioctl.SEARCH_PATH_ENV, ":".join(str(tmp_path) + p for p in search.split(":"))
    )
    assert istioctl.resolve("", version.replace(".", "-")) == str(binary)


def test_the_distributed_stack_runs_with_the_compose_files_settings() -> None:
    """scripts/distributed_stack.py (make distributed-test) reads its Airflow settings from
    docker-compose.yaml: only what names a container or a path in the image differs."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import distributed_stack as ds

    compose = ds.compose_env()
    dist = ds.Dist(Path("/tmp/dist"), 28280, 25432, 26379)
    box = {"KUBECONFIG": "/tmp/kubeconfig", "SANDBOX_PROMETHEUS_URL": "http://127.0.0.1:9"}
    local = ds.local_env(dist, box, {"PATH": "/bin"}, compose)
    containers = {"127.0.0.1:25432": "postgres", "127.0.0.1:26379": "redis:6379"}
    containers["http://127.0.0.1:28280"] = "http://airflow-apiserver:8080"
    image_paths = {"PYTHONPATH", "ISTIOCTL_SEARCH_PATH", "AIRFLOW_CONN_KUBERNETES_DEFAULT"}
    assert compose["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for key, value in compose.items():
        if key in image_paths:
            continue
        back = local[key]
        for here, there in containers.items():
            back = back.replace(here, there)
        assert back == value, key
    conn = json.loads(local["AIRFLOW_CONN_KUBERNETES_DEFAULT"])
    assert conn["extra"] == {"kube_config_path": "/tmp/kubeconfig", "in_cluster": False}
