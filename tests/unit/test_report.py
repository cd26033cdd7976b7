"""The run report: revisions before and after per namespace, step timings, metric figures."""

from __future__ import annotations

import json

import pytest

from istio_upgrade.health import Metric, evaluate, query_failed
from istio_upgrade.model import (
    ControlPlane,
    MeshSnapshot,
    NamespaceState,
    PodState,
    RevisionTag,
    UpgradePhase,
    WorkloadRef,
)
from istio_upgrade.progress import revision_counts
from istio_upgrade.report import (
    MeshSummary,
    Prechecked,
    duration_text,
    render_report,
    revisions_text,
)

OLD, NEW = "1-14-6", "1-15-4"


def app(name: str, *revisions: str | None) -> NamespaceState:
    ref = WorkloadRef("Deployment", name, name)
    pods = tuple(
        PodState(name, f"{name}-{i}", f"uid-{i}", "Running", ref, rev, None)
        for i, rev in enumerate(revisions)
    )
    return NamespaceState(name, {"istio.io/rev": "default"}, (ref,), pods)


def snapshot(planes: tuple[str, ...], tag: str, *namespaces: NamespaceState) -> MeshSummary:
    """The report's view of a mesh, through the summary precheck pushes (JSON and back)."""
    snap = MeshSnapshot(
        tuple(ControlPlane(r, True, None, True) for r in planes),
        (RevisionTag("default", tag),),
        namespaces,
        "2025-01-01T02:00:00+00:00",
    )
    pre = Prechecked("no issues", MeshSummary.of(snap))
    return Prechecked.from_json(json.loads(json.dumps(pre.to_json()))).before


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        pytest.param(app("foo", OLD, OLD), f"{OLD} x2", id="one-revision"),
        pytest.param(app("foo", NEW, OLD, NEW), f"{OLD} x1, {NEW} x2", id="mixed"),
        pytest.param(app("foo", None), "-", id="not-injected"),
        pytest.param(None, "absent", id="absent"),
    ],
)
def test_revisions_text(ns: NamespaceState | None, text: str) -> None:
    assert revisions_text(None if ns is None else revision_counts(ns.pods)) == text


def test_the_summary_stays_small_however_many_pods() -> None:
    pods = [NEW] * 400
    summary = Prechecked("", MeshSummary.of(snapshot_of(app("big", *pods)))).to_json()["before"]
    assert summary["namespaces"] == {"big": {NEW: 400}}


def snapshot_of(*namespaces: NamespaceState) -> MeshSnapshot:
    return MeshSnapshot((), (), namespaces, "2025-01-01T02:00:00+00:00")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(4.25, "4.2s", id="seconds"),
        pytest.param(125, "2m05s", id="minutes"),
        pytest.param(3725, "1h02m", id="hours"),
    ],
)
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_report_of_a_completed_run() -> None:
    before = snapshot((OLD,), OLD, app("bar", OLD, OLD), app("foo", OLD))
    after = snapshot((NEW,), NEW, app("bar", NEW, NEW), app("foo", NEW), app("new", NEW))
    checks = [
        evaluate("bar", Metric.SUCCESS_RATE, 0.9987, 0.99),
        evaluate("bar", Metric.P99_MS, 612.0, 500.0),
        query_failed("bar", Metric.P99_MS, 500.0, "HTTP 500: boom"),
    ]
    text = render_report(
        before,
        after,
        {"install": 42.0, "canary": 310.5, "waves": 95.0},
        checks,
        UpgradePhase.COMPLETED,
        "every namespace runs 1-15-4; 1-14-6 removed",
    )
    assert (
        text
        == """\
Istio canary upgrade report
Phase: completed: every namespace runs 1-15-4; 1-14-6 removed
Taken: before 2025-01-01T02:00:00+00:00, after 2025-01-01T02:00:00+00:00

Control planes:
  before: 1-14-6
  after:  1-15-4

Tags:
  TAG      BEFORE  AFTER
  default  1-14-6  1-15-4

Namespaces (live injected pods per revision):
  NAMESPACE  BEFORE     AFTER
  bar        1-14-6 x2  1-15-4 x2
  foo        1-14-6 x1  1-15-4 x1
  new        absent     1-15-4 x1

Steps:
  STEP     TIME
  install  42.0s
  canary   5m10s
  waves    1m35s
  total    7m28s

Metric checks:
  NAMESPACE  METRIC        VALUE    LIMIT    OUTCOME
  bar        success_rate  0.9987   0.9900   passed
  bar        p99_ms        612.0ms  500.0ms  breached
  bar        p99_ms        -        500.0ms  query_failed
  ! namespace 'bar' p99_ms=612.0ms above limit 500.0ms
  ! namespace 'bar' p99_ms: query failed (HTTP 500: boom); counts as failed
"""
    )


def test_report_without_checks_or_timings() -> None:
    empty = snapshot((), "none")
    text = render_report(empty, empty, {}, [], UpgradePhase.ROLLED_BACK, "gate failed")
    assert "Phase: rolled_back: gate failed\n" in text
    assert "  before: none\n" in text
    assert "  total  0.0s\n" in text
    assert text.endswith("Metric checks:\n  (none recorded)\n")
