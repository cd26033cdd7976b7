"""The run report as text: outcome, revisions before and after, step timings and metric figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from istio_upgrade.health import Metric, MetricCheck
from istio_upgrade.model import MeshSnapshot, NamespaceState, UpgradePhase
from istio_upgrade.progress import revision_counts


def revisions_text(namespace: NamespaceState | None) -> str:
    """What a namespace's live proxies run: `1-15-4 x3`, a mix, `-` (none) or `absent`."""
    if namespace is None:
        return "absent"
    counts = revision_counts(namespace.pods)
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


def _control_planes(snapshot: MeshSnapshot) -> str:
    planes = sorted(snapshot.control_planes, key=lambda c: c.revision)
    return ", ".join(f"{c.revision}{'' if c.ready else ' (not ready)'}" for c in planes) or "none"


def _figure(check: MetricCheck, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if check.metric is Metric.SUCCESS_RATE else f"{value:.1f}ms"


def render_report(
    before: MeshSnapshot,
    after: MeshSnapshot,
    timings: Mapping[str, float],
    checks: Sequence[MetricCheck],
    phase: UpgradePhase,
    reason: str,
) -> str:
    """The report of one run, from two snapshots and what the tasks measured; pure."""
    lines = [
        "Istio canary upgrade report",
        f"Phase: {phase.value}: {reason}",
        f"Taken: before {before.taken_at}, after {after.taken_at}",
        "",
        "Control planes:",
        f"  before: {_control_planes(before)}",
        f"  after:  {_control_planes(after)}",
    ]
    tags = sorted({t.name for t in (*before.tags, *after.tags)})
    if tags:
        lines += ["", "Tags:"]
        lines += _table(
            ("TAG", "BEFORE", "AFTER"),
            [
                (
                    name,
                    (b.revision if (b := before.tag(name)) else "absent"),
                    (a.revision if (a := after.tag(name)) else "absent"),
                )
                for name in tags
            ],
        )
    names = sorted({n.name for n in (*before.namespaces, *after.namespaces)})
    lines += ["", "Namespaces (live injected pods per revision):"]
    lines += _table(
        ("NAMESPACE", "BEFORE", "AFTER"),
        [
            (n, revisions_text(before.namespace(n)), revisions_text(after.namespace(n)))
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
                (c.namespace, c.metric.value, _figure(c, c.value), _figure(c, c.limit), c.outcome)
                for c in checks
            ],
        )
        lines += [f"  ! {c.message}" for c in checks if not c.ok]
    else:
        lines.append("  (none recorded)")
    return "\n".join(lines) + "\n"
