"""Which istioctl the worker may run: only the operator's folders, only the target's version."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from istio_upgrade.errors import ParamError
from istio_upgrade.istioctl import SEARCH_PATH_ENV, check_version, resolve


def fake_istioctl(folder: Path, version: str) -> Path:
    """A stand-in for an istioctl binary that only answers `version --remote=false --short`."""
    path = folder / f"istioctl-{version}" / "istioctl"
    path.parent.mkdir(parents=True)
    path.write_text(f"#!/bin/sh\necho 'client version: {version}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    monkeypatch.setenv(SEARCH_PATH_ENV, str(folder))
    return folder


def test_a_version_is_found_in_the_operators_folders(allowed: Path) -> None:
    binary = fake_istioctl(allowed, "1.32.0-dev")
    assert resolve("", "1-32-0") == str(binary)
    assert resolve("1.32.0", "1-32-0") == str(binary)


def test_a_path_inside_the_folders_is_accepted(allowed: Path) -> None:
    binary = fake_istioctl(allowed, "1.32.0")
    assert resolve(str(binary), "1-32-0") == str(binary)


@pytest.mark.parametrize("program", ["/bin/sh", "outside"])
def test_any_other_executable_is_refused_before_it_runs(
    allowed: Path, tmp_path: Path, program: str
) -> None:
    path = program if program.startswith("/") else str(fake_istioctl(tmp_path / "x", "1.32.0"))
    with pytest.raises(ParamError) as refused:
        resolve(path, "1-32-0")
    assert refused.value.param == "istioctl" and SEARCH_PATH_ENV in str(refused.value)


def test_a_link_out_of_the_folders_is_refused(allowed: Path, tmp_path: Path) -> None:
    (allowed / "istioctl-1.32.0").mkdir()
    (allowed / "istioctl-1.32.0" / "istioctl").symlink_to("/bin/sh")
    with pytest.raises(ParamError):
        resolve(str(allowed / "istioctl-1.32.0" / "istioctl"), "1-32-0")


def test_the_binary_must_report_the_targets_version(allowed: Path) -> None:
    check_version(str(fake_istioctl(allowed, "1.32.0-dev")), "1.32.0")
    wrong = fake_istioctl(allowed, "1.31.4")
    with pytest.raises(ParamError) as refused:
        check_version(str(wrong), "1.32.0")
    assert "is istioctl 1.31.4" in str(refused.value)
