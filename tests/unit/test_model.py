"""The pure helpers added to model: revision names as versions, live revisions per namespace."""

from __future__ import annotations

import pytest

from istio_upgrade.model import PodState, revision_version
from istio_upgrade.progress import revision_counts


@pytest.mark.parametrize(
    ("revision", "version"),
    [
        pytest.param("1-15-4", "1.15.4", id="plain"),
        pytest.param("1-31-0", "1.31.0", id="two-digit-minor"),
        pytest.param("1-16-0-beta-1", None, id="prerelease-is-ambiguous"),
        pytest.param("canary", None, id="named"),
        pytest.param("1-15", None, id="no-patch"),
        pytest.param("", None, id="empty"),
    ],
)
def test_revision_version(revision: str, version: str | None) -> None:
    assert revision_version(revision) == version


def _pod(name: str, revision: str | None, phase: str = "Running") -> PodState:
    return PodState("ns", name, name, phase, None, revision, None)


@pytest.mark.parametrize(
    ("pods", "counts"),
    [
        pytest.param([], {}, id="no-pods"),
        pytest.param([_pod("a", "1-15-4"), _pod("b", "1-14-6"), _pod("c", "1-15-4")],
                     {"1-14-6": 1, "1-15-4": 2}, id="sorted-by-revision"),
        pytest.param([_pod("a", None)], {}, id="not-injected"),
        pytest.param([_pod("a", "1-14-6", "Succeeded"), _pod("b", "1-14-6", "Failed"),
                      _pod("c", "1-14-6", "Pending")], {"1-14-6": 1}, id="finished-pods-left-out"),
    ],
)  # fmt: skip
def test_revision_counts(pods: list[PodState], counts: dict[str, int]) -> None:
    assert revision_counts(pods) == counts
