"""Airflow plugin: the maintenance-window timetable. It adapts `istio_upgrade.windows`.

Airflow imports this file from its plugins folder (`[core] plugins_folder`, by default
`$AIRFLOW_HOME/plugins`) as the top-level module `maintenance_window`, and puts that folder on
sys.path: DAGs import the timetable as `from maintenance_window import ...`, the name under
which the plugin registers it (serializing a DAG fails for an unregistered timetable).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.plugins_manager import AirflowPlugin
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction, Timetable

from istio_upgrade.windows import (
    MaintenanceWindow,
    describe,
    next_scheduled_window,
    parse_windows,
    window_at,
)


def _utcnow() -> pendulum.DateTime:
    """The current time (a module function, so tests can pin it)."""
    return pendulum.now("UTC")


class MaintenanceWindowTimetable(Timetable):
    """A run starts when a maintenance window opens; its data interval is the window.

    `MaintenanceWindowTimetable("Tue,Thu 02:00-04:00 Asia/Tokyo", "Sat 23:00-01:30 UTC")`:
    specs or `MaintenanceWindow`s (grammar and DST rules in `istio_upgrade.windows`). Without
    catchup, windows that have ended are skipped, but the one open now is still scheduled
    (its run starts at once and has the rest of the window).
    """

    def __init__(self, *windows: str | MaintenanceWindow) -> None:
        self.windows = parse_windows(windows)
        self.description = (
            f"A run starts when a maintenance window opens and its data interval is the window: "
            f"{describe(self.windows)}"
        )

    @property
    def summary(self) -> str:
        return describe(self.windows)

    def serialize(self) -> dict[str, Any]:
        # each window as its spec, which parse reads back (and checks again)
        return {"windows": [window.label for window in self.windows]}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> MaintenanceWindowTimetable:
        return cls(*data["windows"])

    def infer_manual_data_interval(self, *, run_after: pendulum.DateTime) -> DataInterval:
        """The window `run_after` falls in; outside every window none ("run now": zero length)."""
        window = window_at(self.windows, run_after)
        if window is None:
            return DataInterval.exact(run_after)
        return DataInterval(window.start, window.end)

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        last = last_automated_data_interval
        window = next_scheduled_window(
            self.windows,
            last_start=None if last is None else last.start,
            earliest=restriction.earliest,
            latest=restriction.latest,
            catchup=restriction.catchup,
            now=_utcnow(),
        )
        if window is None:
            return None
        interval = DataInterval(window.start, window.end)
        return DagRunInfo(run_after=window.start, data_interval=interval)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaintenanceWindowTimetable):
            return NotImplemented
        return self.windows == other.windows

    def __hash__(self) -> int:
        return hash(self.windows)


class MaintenanceWindowPlugin(AirflowPlugin):
    name = "maintenance_window"
    timetables = [MaintenanceWindowTimetable]  # noqa: RUF012 (AirflowPlugin declares a list)
