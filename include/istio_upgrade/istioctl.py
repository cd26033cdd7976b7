"""Building and running istioctl commands. The only module that starts subprocesses.

istioctl's exit code is not proof of anything: `tag set` without `-y` and without a terminal
exits 0 having changed nothing. Every command here passes `-y`, and callers read the result
back from the cluster.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from istio_upgrade.errors import ParamError
from istio_upgrade.model import revision_version

log = logging.getLogger(__name__)

# Where locally built or downloaded istioctl binaries live, one folder per version
# (`istioctl-1.31.0/istioctl`); the sandbox's build cache follows the same layout.
SEARCH_PATH_ENV = "ISTIOCTL_SEARCH_PATH"
DEFAULT_SEARCH_PATH = str(Path.home() / ".cache" / "istio-canary-upgrade")


@dataclass(frozen=True)
class Result:
    """One finished istioctl call: the command, its exit code and what it printed."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        out = (self.stdout + self.stderr).strip()
        return f"`{' '.join(self.argv)}` exited {self.returncode}:\n{out}"


class Runner(Protocol):
    """Runs one istioctl command somewhere: here (`Istioctl`) or in a pod (istioctl_in_cluster)."""

    def run(self, *args: str) -> Result: ...


def search_folders() -> list[str]:
    """The operator's folders of istioctl binaries ($ISTIOCTL_SEARCH_PATH, colon separated)."""
    return [f for f in os.environ.get(SEARCH_PATH_ENV, DEFAULT_SEARCH_PATH).split(":") if f]


def inside(path: str, folders: list[str]) -> bool:
    """`path` lies in one of `folders`, after links and '..' (so neither leads out of them)."""
    real = os.path.realpath(path)
    return any(real.startswith(os.path.realpath(f) + os.sep) for f in folders)


def resolve(spec: str, target_revision: str) -> str:
    """The istioctl binary to use: a path, a version (`1.31.0`), or "" for the target's version.

    Versions are looked up as `istioctl-<version>*/istioctl` in the folders of
    $ISTIOCTL_SEARCH_PATH (colon separated), so `1.31.0` finds a `1.31.0-dev` build too. A
    path must lie in one of those folders: whoever may trigger the DAG chooses its params,
    and must not make the worker run a program of their choice.
    """
    folders = search_folders()
    if spec and ("/" in spec or spec == "istioctl"):
        path = shutil.which(spec) if spec == "istioctl" else spec
        if not path or not os.access(path, os.X_OK):
            raise ParamError(
                "istioctl",
                spec,
                "is not an executable file",
                "give the path of an istioctl binary, or its version",
            )
        if not inside(path, folders):
            raise ParamError(
                "istioctl",
                spec,
                f"is outside the istioctl folders the operator allows ({SEARCH_PATH_ENV}: "
                f"{':'.join(folders)})",
                "give a version such as '1.31.0' instead, or ask the operator to put the binary "
                "at <folder>/istioctl-<version>/istioctl in one of those folders",
            )
        return path
    version = spec or revision_version(target_revision)
    if not version:
        raise ParamError(
            "istioctl",
            spec,
            f"cannot be found: target_revision {target_revision!r} spells no Istio version",
            "set istioctl to a version such as '1.31.0' or a path",
        )
    for folder in folders:
        matches = sorted(glob.glob(os.path.join(folder, f"istioctl-{version}*", "istioctl")))
        if matches:
            return matches[-1]
    raise ParamError(
        "istioctl",
        spec or "",
        f"no istioctl {version} found in {folders}",
        f"put it at <folder>/istioctl-{version}/istioctl (folders from "
        f"${SEARCH_PATH_ENV}) or pass its path",
    )


def client_version(binary: str, timeout_seconds: float = 30.0) -> str:
    """What an istioctl binary says its own version is (`istioctl version --remote=false`)."""
    try:
        proc = subprocess.run(
            [binary, "version", "--remote=false", "--short"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout_seconds,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ParamError(
            "istioctl", binary, f"did not answer `version` ({err})", "give a working istioctl"
        ) from err
    text = proc.stdout.strip().removeprefix("client version:").strip()
    if proc.returncode != 0 or not text:
        raise ParamError(
            "istioctl",
            binary,
            f"`version --remote=false` exited {proc.returncode} without a version",
            "give an istioctl binary (its version decides what `install` installs)",
        )
    return text.splitlines()[0].strip()


def check_version(binary: str, expected: str) -> None:
    """The binary is the istioctl of `expected` (`1.31.0` accepts a `1.31.0-dev` build)."""
    found = client_version(binary)
    if found != expected and not found.startswith(expected + "-"):
        raise ParamError(
            "istioctl",
            binary,
            f"is istioctl {found}, which would install Istio {found}, not {expected}",
            f"give the istioctl of {expected} (its path or version)",
        )


@dataclass(frozen=True)
class Istioctl:
    """One istioctl binary bound to one cluster (its kubeconfig, or in-cluster credentials)."""

    binary: str
    kubeconfig: str | None = None
    context: str | None = None
    timeout_seconds: float = 900.0

    def argv(self, *args: str) -> tuple[str, ...]:
        cluster = []
        if self.kubeconfig:
            cluster.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            cluster.append(f"--context={self.context}")
        return (self.binary, *args, *cluster)

    def run(self, *args: str) -> Result:
        argv = self.argv(*args)
        log.info("running istioctl argv=%s", " ".join(argv))
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=self.timeout_seconds,
        )
        result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
        log.info(
            "istioctl exited returncode=%d\n%s",
            result.returncode,
            (result.stdout + result.stderr).strip(),
        )
        return result


def precheck_args() -> tuple[str, ...]:
    return ("x", "precheck")


def install_args(
    revision: str, profile: str, overlay: str | None = None, readiness_timeout_seconds: int = 300
) -> tuple[str, ...]:
    # The overlay comes after --set so a user's file can refine, never lose, the revision.
    args = [
        "install",
        "-y",
        "--set",
        f"revision={revision}",
        "--set",
        f"profile={profile}",
        "--readiness-timeout",
        f"{readiness_timeout_seconds}s",
    ]
    if overlay:
        args += ["-f", overlay]
    return tuple(args)


def tag_set_args(tag: str, revision: str) -> tuple[str, ...]:
    return ("tag", "set", tag, "--revision", revision, "--overwrite", "-y")


def uninstall_args(revision: str) -> tuple[str, ...]:
    return ("uninstall", "--revision", revision, "-y")
