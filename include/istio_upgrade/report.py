"""The run report as text: outcome, revisions before and after, step timings and metric figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from istio_upgrade.contracts import Contract, allow
from istio_upgrade.health import MetricCheck, figure
from istio_upgrade.model import MeshSnapshot, UpgradePhase
from istio_upgrade.progress import revision_counts


@dataclass(frozen=True)
class MeshSummary:
    """What the report shows of a snapshot: a few bytes per namespace, not per pod.

    The state before the run travels in XCom from precheck to the report; the whole snapshot
    (every pod) would grow to megabytes at a thousand namespaces.
    """

    taken_at: str
    control_planes: tuple[str, ...]  # "1-15-4", or "1-15-4 (not ready)"
    tags: dict[str, str]  # tag -> revision
    namespaces: dict[str, dict[str, int]]  # namespace -> live injected pods per revision

    @classmethod
    def of(cls, snapshot: MeshSnapshot) -> MeshSummary:
        planes = sorted(snapshot.control_planes, key=lambda c: c.revision)
        return cls(
            taken_at=snapshot.taken_at,
            control_planes=tuple(
                f"{c.revision}{'' if c.ready else ' (not ready)'}" for c in planes
            ),
            tags={t.name: t.revision for t in snapshot.tags},
            namespaces={n.name: revision_counts(n.pods) for n in snapshot.namespaces},
        )


@dataclass(frozen=True)
class Prechecked(Contract):
    """What precheck hands the report: istioctl's findings and the mesh before any change."""

    output: str
    before: MeshSummary


class RunReport(TypedDict):
    """The run's result (XCom `report`), read by `conclude` and by people: plain JSON, so the
    UI and REST clients show it as it is, without this project's classes."""

    phase: str  # an UpgradePhase value
    reason: str
    text: str


def revisions_text(counts: Mapping[str, int] | None) -> str:
    """What a namespace's live proxies run: `1-15-4 x3`, a mix, `-` (none) or `absent`."""
    if counts is None:
        return "absent"
    return ", ".join(f"{rev} x{n}" for rev, n in counts.items()) or "-"


def duration_text(seconds: float) -> str:
    """A duration as a person reads it: `4.2s`, `2m05s`, `1h02m`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, indented under a section title."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def render_report(
    before: MeshSummary,
    after: MeshSummary,
    timings: Mapping[str, float],
    checks: Sequence[MetricCheck],
    phase: UpgradePhase,
    reason: str,
) -> str:
    """The report of one run, from two summaries and what the tasks measured; pure."""
    lines = [
        "Istio canary upgrade report",
        f"Phase: {phase.value}: {reason}",
        f"Taken: before {before.taken_at}, after {after.taken_at}",
        "",
        "Control planes:",
        f"  before: {', '.join(before.control_planes) or 'none'}",
        f"  after:  {', '.join(after.control_planes) or 'none'}",
    ]
    tags = sorted({*before.tags, *after.tags})
    if tags:
        lines += ["", "Tags:"]
        lines += _table(
            ("TAG", "BEFORE", "AFTER"),
            [
                (name, before.tags.get(name, "absent"), after.tags.get(name, "absent"))
                for name in tags
            ],
        )
    names = sorted({*before.namespaces, *after.namespaces})
    lines += ["", "Namespaces (live injected pods per revision):"]
    lines += _table(
        ("NAMESPACE", "BEFORE", "AFTER"),
        [
            (n, revisions_text(before.namespaces.get(n)), revisions_text(after.namespaces.get(n)))
            for n in names
        ],
    )
    lines += ["", "Steps:"]
    rows = [(step, duration_text(seconds)) for step, seconds in timings.items()]
    rows.append(("total", duration_text(sum(timings.values()))))
    lines += _table(("STEP", "TIME"), rows)
    lines += ["", "Metric checks:"]
    if checks:
        lines += _table(
            ("NAMESPACE", "METRIC", "VALUE", "LIMIT", "OUTCOME"),
            [
                (
                    c.namespace,
                    c.metric.value,
                    figure(c.metric, c.value, "-"),
                    figure(c.metric, c.limit, "-"),
                    c.outcome,
                )
                for c in checks
            ],
        )
        lines += [f"  ! {c.message}" for c in checks if not c.ok]
    else:
        lines.append("  (none recorded)")
    return "\n".join(lines) + "\n"


allow(Prechecked)
