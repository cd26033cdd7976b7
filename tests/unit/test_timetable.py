"""The maintenance-window timetable as Airflow sees it: registration, runs, serialization.

The timetable is taken from Airflow's plugin registry after pointing `[core] plugins_folder`
at this repo's plugins/, the way the scheduler and the DAG processor find it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pendulum
import pytest
from airflow import plugins_manager, settings
from airflow.exceptions import SerializationError
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG
from airflow.serialization.serialized_objects import DagSerialization
from airflow.timetables.base import DataInterval, TimeRestriction

from istio_upgrade.errors import ParamError

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
CLASSPATH = "maintenance_window.MaintenanceWindowTimetable"  # plugin files load as top-level
START = pendulum.datetime(2024, 1, 1, tz="UTC")


def _forget_plugins() -> None:
    """Drop what the plugins manager cached, so it reads settings.PLUGINS_FOLDER again."""
    plugins_manager._get_plugins.cache_clear()
    plugins_manager.get_timetables_plugins.cache_clear()


@pytest.fixture
def plugins_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Point Airflow at a plugins folder (AIRFLOW__CORE__PLUGINS_FOLDER does this in a deploy)."""

    def use(folder: Path) -> None:
        monkeypatch.setattr(settings, "PLUGINS_FOLDER", str(folder))
        _forget_plugins()

    yield use
    _forget_plugins()


@pytest.fixture
def timetable_cls(plugins_folder: Callable[[Path], None]) -> Any:
    """The timetable class as registered by the plugin in plugins/."""
    plugins_folder(PLUGINS)
    return plugins_manager.get_timetables_plugins()[CLASSPATH]


@pytest.fixture
def pin_now(timetable_cls: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    def pin(iso: str) -> None:
        moment = pendulum.parse(iso)
        monkeypatch.setattr(sys.modules[timetable_cls.__module__], "_utcnow", lambda: moment)

    return pin


def _runs(timetable: Any, earliest: str, count: int, zone: str) -> list[tuple[str, str]]:
    """The first scheduled runs' data intervals (local ISO); each run starts at its start."""
    restriction = TimeRestriction(pendulum.parse(earliest), None, catchup=True)  # type: ignore[arg-type]
    last: DataInterval | None = None
    runs = []
    for _ in range(count):
        info = timetable.next_dagrun_info(
            last_automated_data_interval=last, restriction=restriction
        )
        assert info is not None and info.data_interval is not None
        assert info.run_after == info.data_interval.start
        last = info.data_interval
        runs.append(_local(last, zone))
    return runs


def _local(interval: DataInterval, zone: str) -> tuple[str, str]:
    return interval.start.in_timezone(zone).isoformat(), interval.end.in_timezone(zone).isoformat()


def test_plugin_registers_the_timetable(timetable_cls: Any) -> None:
    assert f"{timetable_cls.__module__}.{timetable_cls.__qualname__}" == CLASSPATH
    assert plugins_manager.get_import_errors() == {}


@pytest.mark.parametrize(
    ("specs", "earliest", "zone", "expected"),
    [
        pytest.param(["daily 02:00-04:00 Europe/Berlin"], "2024-03-30T00:00:00Z", "Europe/Berlin", [
            ("2024-03-30T02:00:00+01:00", "2024-03-30T04:00:00+01:00"),
            ("2024-03-31T03:00:00+02:00", "2024-03-31T05:00:00+02:00"),
            ("2024-04-01T02:00:00+02:00", "2024-04-01T04:00:00+02:00"),
        ], id="berlin-spring-forward"),
        pytest.param(["daily 02:30-03:30 Europe/Berlin"], "2024-10-26T00:00:00Z", "Europe/Berlin", [
            ("2024-10-26T02:30:00+02:00", "2024-10-26T03:30:00+02:00"),
            ("2024-10-27T02:30:00+02:00", "2024-10-27T02:30:00+01:00"),
            ("2024-10-28T02:30:00+01:00", "2024-10-28T03:30:00+01:00"),
        ], id="berlin-fall-back"),
        pytest.param(["daily 02:15-03:15 America/New_York"], "2024-03-09T00:00:00Z",
                     "America/New_York", [
            ("2024-03-09T02:15:00-05:00", "2024-03-09T03:15:00-05:00"),
            ("2024-03-10T03:00:00-04:00", "2024-03-10T04:00:00-04:00"),
            ("2024-03-11T02:15:00-04:00", "2024-03-11T03:15:00-04:00"),
        ], id="new-york-spring-forward"),
        pytest.param(["Sat 23:00-03:30 Europe/Berlin"], "2024-10-21T00:00:00Z", "Europe/Berlin", [
            ("2024-10-26T23:00:00+02:00", "2024-10-27T02:30:00+01:00"),
            ("2024-11-02T23:00:00+01:00", "2024-11-03T03:30:00+01:00"),
        ], id="night-window-across-fall-back-lasts-its-hours"),
        pytest.param(["Tue 02:00-04:00 Asia/Tokyo", "Sat 23:00-01:30 Europe/Berlin"],
                     "2024-04-01T00:00:00Z", "UTC", [
            ("2024-04-01T17:00:00+00:00", "2024-04-01T19:00:00+00:00"),
            ("2024-04-06T21:00:00+00:00", "2024-04-06T23:30:00+00:00"),
            ("2024-04-08T17:00:00+00:00", "2024-04-08T19:00:00+00:00"),
        ], id="two-windows-a-week"),
    ],
)  # fmt: skip
def test_scheduled_runs(
    timetable_cls: Any, specs: list[str], earliest: str, zone: str, expected: list[tuple[str, str]]
) -> None:
    assert _runs(timetable_cls(*specs), earliest, len(expected), zone) == expected


@pytest.mark.parametrize(
    ("now", "last_start", "run"),
    [
        pytest.param("2024-05-10T03:00:00Z", "2024-05-03T02:00:00Z", "2024-05-10T02:00:00+00:00",
                     id="open-window-still-scheduled"),
        pytest.param("2024-05-10T04:00:00Z", "2024-05-03T02:00:00Z", "2024-05-11T02:00:00+00:00",
                     id="ended-window-skipped"),
        pytest.param("2024-05-10T03:00:00Z", None, "2024-05-10T02:00:00+00:00",
                     id="first-run-in-an-open-window"),
    ],
)  # fmt: skip
def test_no_catchup(
    timetable_cls: Any, pin_now: Callable[[str], None], now: str, last_start: str | None, run: str
) -> None:
    pin_now(now)
    last = None
    if last_start:
        start = pendulum.parse(last_start)
        last = DataInterval(start, start.add(hours=2))  # type: ignore[union-attr]
    info = timetable_cls("daily 02:00-04:00 UTC").next_dagrun_info(
        last_automated_data_interval=last, restriction=TimeRestriction(START, None, catchup=False)
    )
    assert info.run_after.isoformat() == run


def test_no_run_after_the_end_date(timetable_cls: Any) -> None:
    timetable = timetable_cls("daily 02:00-04:00 UTC")
    restriction = TimeRestriction(START, pendulum.datetime(2024, 1, 2, 1, tz="UTC"), catchup=True)
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    assert first.run_after == pendulum.datetime(2024, 1, 1, 2, tz="UTC")
    after = timetable.next_dagrun_info(
        last_automated_data_interval=first.data_interval, restriction=restriction
    )
    assert after is None


@pytest.mark.parametrize(
    ("run_after", "interval"),
    [
        pytest.param("2024-04-06T23:30:00+02:00",
                     ("2024-04-06T23:00:00+02:00", "2024-04-07T01:30:00+02:00"), id="in-a-window"),
        pytest.param("2024-04-07T00:45:00+02:00",
                     ("2024-04-06T23:00:00+02:00", "2024-04-07T01:30:00+02:00"),
                     id="after-midnight-in-a-window"),
        pytest.param("2024-04-09T12:00:00+02:00",
                     ("2024-04-09T12:00:00+02:00", "2024-04-09T12:00:00+02:00"),
                     id="outside-run-now"),
    ],
)  # fmt: skip
def test_manual_run_interval(timetable_cls: Any, run_after: str, interval: tuple[str, str]) -> None:
    timetable = timetable_cls("Sat 23:00-01:30 Europe/Berlin")
    found = timetable.infer_manual_data_interval(run_after=pendulum.parse(run_after))
    assert _local(found, "Europe/Berlin") == interval


def test_summary_and_description(timetable_cls: Any) -> None:
    timetable = timetable_cls("Tue,Thu 02:00-04:00 Asia/Tokyo; Sat 23:00-01:30 Europe/Berlin")
    assert timetable.summary == "Tue,Thu 02:00-04:00 Asia/Tokyo; Sat 23:00-01:30 Europe/Berlin"
    assert timetable.description.endswith(timetable.summary)
    assert "data interval is the window" in timetable.description


def test_serialize_round_trip(timetable_cls: Any) -> None:
    timetable = timetable_cls("Tue,Thu 02:00-04:00 Asia/Tokyo", "cron '0 */6 * * *' for 30m UTC")
    data = json.loads(json.dumps(timetable.serialize()))
    assert data == {"windows": ["Tue,Thu 02:00-04:00 Asia/Tokyo", "cron '0 */6 * * *' for 30m UTC"]}
    restored = timetable_cls.deserialize(data)
    assert restored == timetable
    assert restored.summary == timetable.summary


def _dag(timetable: Any) -> DAG:
    with DAG("window_probe", schedule=timetable, start_date=START, catchup=False) as dag:
        EmptyOperator(task_id="noop")
    return dag


def test_dag_serialization_round_trip(timetable_cls: Any) -> None:
    timetable = timetable_cls("Tue,Thu 02:00-04:00 Asia/Tokyo; Sat 23:00-01:30 Europe/Berlin")
    encoded = json.loads(json.dumps(DagSerialization.serialize_dag(_dag(timetable))))
    assert encoded["timetable"]["__type"] == CLASSPATH
    restored = DagSerialization.deserialize_dag(encoded).timetable
    assert type(restored) is timetable_cls
    assert restored.serialize() == timetable.serialize()
    assert restored.summary == timetable.summary
    restriction = TimeRestriction(START, None, catchup=True)
    runs = [
        tt.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
        for tt in (timetable, restored)
    ]
    assert runs[0] == runs[1]


def test_dag_serialization_needs_the_plugin(
    timetable_cls: Any, plugins_folder: Callable[[Path], None], tmp_path: Path
) -> None:
    dag = _dag(timetable_cls("Sat 02:00-04:00 UTC"))
    plugins_folder(tmp_path)  # a plugins folder without ours: the class is not registered
    with pytest.raises(SerializationError, match=f"{CLASSPATH!r} is not registered"):
        DagSerialization.serialize_dag(dag)


def test_bad_window_fails_at_dag_parse(timetable_cls: Any) -> None:
    with pytest.raises(ParamError, match=r"param 'windows'='Tue 02:00-04:00' has no time zone"):
        timetable_cls("Tue 02:00-04:00")
