"""Maintenance-window arithmetic: specs, next windows across DST, the window at an instant."""

from __future__ import annotations

from datetime import datetime, timedelta

import pendulum
import pytest

from istio_upgrade.errors import ParamError
from istio_upgrade.windows import (
    MaintenanceWindow,
    Window,
    iter_windows,
    next_scheduled_window,
    next_window,
    parse_windows,
    window_at,
)

MINUTE = timedelta(minutes=1)


def _at(iso: str) -> pendulum.DateTime:
    moment = pendulum.parse(iso)
    assert isinstance(moment, pendulum.DateTime)
    return moment


def _local(window: Window) -> tuple[str, str]:
    """The window as ISO start and end in its own time zone, as a reader checks it."""
    zone = window.spec.timezone
    return window.start.in_timezone(zone).isoformat(), window.end.in_timezone(zone).isoformat()


def _first(window: MaintenanceWindow, count: int) -> list[Window]:
    found = iter_windows([window], _at("2024-01-01T00:00:00Z"))
    return [next(found) for _ in range(count)]


@pytest.mark.parametrize(
    ("spec", "cron", "minutes", "zone", "label"),
    [
        pytest.param("Tue,Thu 02:00-04:00 Asia/Tokyo", "0 2 * * 2,4", 120, "Asia/Tokyo",
                     "Tue,Thu 02:00-04:00 Asia/Tokyo", id="two-days"),
        pytest.param("Sat 23:00-01:30 Europe/Berlin", "0 23 * * 6", 150, "Europe/Berlin",
                     "Sat 23:00-01:30 Europe/Berlin", id="across-midnight"),
        pytest.param("mon-fri 22:15-06:00 America/New_York", "15 22 * * 1-5", 465,
                     "America/New_York", "Mon-Fri 22:15-06:00 America/New_York",
                     id="weekday-range-any-case"),
        pytest.param("Fri-Mon 00:00-24:00 UTC", "0 0 * * 0,1,5,6", 1440, "UTC",
                     "Fri-Mon 00:00-24:00 UTC", id="range-wraps-the-week-whole-days"),
        pytest.param("daily 02:30-03:00 Europe/Berlin", "30 2 * * *", 30, "Europe/Berlin",
                     "daily 02:30-03:00 Europe/Berlin", id="daily"),
        pytest.param("Sat,Sun 22:00-00:00 UTC", "0 22 * * 0,6", 120, "UTC",
                     "Sat,Sun 22:00-00:00 UTC", id="ends-at-midnight"),
        pytest.param("  Tue, Thu   02:00 - 04:00   Asia/Tokyo ", "0 2 * * 2,4", 120, "Asia/Tokyo",
                     "Tue,Thu 02:00-04:00 Asia/Tokyo", id="spaces-tolerated"),
        pytest.param("cron '0 */6 * * *' for 30m UTC", "0 */6 * * *", 30, "UTC",
                     "cron '0 */6 * * *' for 30m UTC", id="cron-form"),
        pytest.param('cron "0 3 1 * *" for 1d2h Europe/Berlin', "0 3 1 * *", 1560, "Europe/Berlin",
                     "cron '0 3 1 * *' for 1d2h Europe/Berlin", id="cron-form-longer-than-a-day"),
    ],
)  # fmt: skip
def test_parse(spec: str, cron: str, minutes: int, zone: str, label: str) -> None:
    window = MaintenanceWindow.parse(spec)
    assert (window.cron, window.duration, window.timezone) == (cron, minutes * MINUTE, zone)
    assert window.label == label
    assert MaintenanceWindow.parse(window.label) == window  # the label reads back


@pytest.mark.parametrize(
    ("cron", "duration", "label"),
    [
        pytest.param("0 2 * * 2,4", timedelta(hours=2), "Tue,Thu 02:00-04:00 Asia/Tokyo",
                     id="numbers"),
        pytest.param("0 2 * * TUE,thu", timedelta(hours=2), "Tue,Thu 02:00-04:00 Asia/Tokyo",
                     id="names"),
        pytest.param("0 2 * * 7", timedelta(hours=2), "Sun 02:00-04:00 Asia/Tokyo",
                     id="seven-is-sunday"),
        pytest.param("0 2 1-31 * 2", timedelta(hours=2), "daily 02:00-04:00 Asia/Tokyo",
                     id="both-day-fields-restricted-match-either"),
        pytest.param("0 2 * * *", timedelta(hours=24), "cron '0 2 * * *' for 1d Asia/Tokyo",
                     id="whole-day-not-at-midnight"),
        pytest.param("0 2 1 * *", timedelta(hours=2), "cron '0 2 1 * *' for 2h Asia/Tokyo",
                     id="monthly"),
    ],
)  # fmt: skip
def test_label_of_a_cron(cron: str, duration: timedelta, label: str) -> None:
    window = MaintenanceWindow(cron, duration, "Asia/Tokyo")
    assert window.label == str(window) == label
    reread = MaintenanceWindow.parse(label)
    assert [w.start for w in _first(reread, 5)] == [w.start for w in _first(window, 5)]


@pytest.mark.parametrize(
    ("spec", "problem", "fix"),
    [
        pytest.param("Tue 02:00-04:00", "has no time zone", "add an IANA time zone name",
                     id="no-zone"),
        pytest.param("Tue 02:00-04:00 Mars/Olympus", "has unknown time zone 'Mars/Olympus'",
                     "use an IANA time zone name", id="unknown-zone"),
        pytest.param("Tue 02:00-04:00 europe/berlin", "has unknown time zone",
                     "did you mean 'Europe/Berlin'?", id="zone-in-wrong-case"),
        pytest.param("Tuesday 02:00-04:00 UTC", "has unknown day 'Tuesday'",
                     "use Mon Tue Wed Thu Fri Sat Sun", id="long-day-name"),
        pytest.param("Tue 25:00-04:00 UTC", "has start time '25:00' outside 00:00-23:59",
                     "write 24-hour HH:MM", id="start-past-midnight"),
        pytest.param("Tue 02:00-24:30 UTC", "has end time '24:30' outside 00:00-24:00",
                     "write 24-hour HH:MM", id="end-past-24h"),
        pytest.param("Tue 02:00-02:00 UTC", "starts and ends at 02:00",
                     "for a whole day write 00:00-24:00", id="empty-window"),
        pytest.param("Tue 2am-4am UTC", "is not a maintenance window",
                     "'DAYS HH:MM-HH:MM ZONE'", id="not-the-grammar"),
        pytest.param("cron '0 2 * *' for 1h UTC", "has 4 fields instead of 5",
                     "minute hour day-of-month month day-of-week", id="cron-four-fields"),
        pytest.param("cron '0 25 * * *' for 1h UTC", "hour '25' is not in 0-23",
                     "minute hour day-of-month month day-of-week", id="cron-hour-out-of-range"),
        pytest.param("cron '0 2 * * 5-1' for 1h UTC", "range '5-1' runs backwards",
                     "e.g. '0 2 * * 2,4'", id="cron-range-backwards"),
        pytest.param("cron '*/0 2 * * *' for 1h UTC", "step in '*/0' is not a positive number",
                     "e.g. '0 2 * * 2,4'", id="cron-zero-step"),
        pytest.param("cron '0 2 30 2 *' for 1h UTC", "never starts",
                     "Feb 30 never comes", id="cron-never-starts"),
        pytest.param("cron '0 */2 * * *' for 3h UTC",
                     "lasts 3h, longer than the 2h between two of its starts",
                     "shorten it to at most 2h", id="overlaps-its-next-window"),
        pytest.param("cron '0 2 * * *' for 2hours UTC", "has length '2hours'",
                     "like 30m, 1h30m or 2d", id="bad-length"),
    ],
)  # fmt: skip
def test_bad_spec(spec: str, problem: str, fix: str) -> None:
    with pytest.raises(ParamError) as caught:
        MaintenanceWindow.parse(spec)
    assert (caught.value.param, caught.value.value) == ("windows", spec)
    assert problem in caught.value.problem
    assert fix in caught.value.fix
    assert str(caught.value).startswith(f"param 'windows'={spec!r} ")


@pytest.mark.parametrize(
    ("cron", "duration", "zone", "problem"),
    [
        pytest.param("0 2 * * *", timedelta(0), "UTC", "not a positive one", id="zero-length"),
        pytest.param("0 2 * * *", timedelta(hours=-1), "UTC", "not a positive one",
                     id="negative-length"),
        pytest.param("0 2 * * *", timedelta(seconds=90), "UTC", "not whole minutes",
                     id="seconds"),
        pytest.param("0 2 * * *", timedelta(hours=25), "UTC",
                     "lasts 1d1h, longer than the 1d between two of its starts",
                     id="longer-than-a-day-daily"),
        pytest.param("0 2 * * *", 120, "UTC", "is not a duration", id="minutes-not-timedelta"),
        pytest.param("0 2 * * *", timedelta(hours=1), "Europe", "unknown time zone 'Europe'",
                     id="zone-is-a-region"),
        pytest.param("0 2 * * * *", timedelta(hours=1), "UTC", "has 6 fields instead of 5",
                     id="six-fields"),
    ],
)  # fmt: skip
def test_bad_window(cron: str, duration: timedelta, zone: str, problem: str) -> None:
    with pytest.raises(ParamError) as caught:
        MaintenanceWindow(cron, duration, zone)
    assert caught.value.param == "windows"
    assert problem in caught.value.problem
    assert caught.value.fix


@pytest.mark.parametrize(
    ("specs", "after", "expected"),
    [
        pytest.param("Sat 02:00-04:00 Europe/Berlin", "2024-03-20T00:00:00+01:00", [
            ("2024-03-23T02:00:00+01:00", "2024-03-23T04:00:00+01:00"),
            ("2024-03-30T02:00:00+01:00", "2024-03-30T04:00:00+01:00"),
            ("2024-04-06T02:00:00+02:00", "2024-04-06T04:00:00+02:00"),
        ], id="berlin-stays-0200-local-across-spring-forward"),
        pytest.param("Sun 02:30-04:30 Europe/Berlin", "2024-03-30T00:00:00+01:00", [
            ("2024-03-31T03:00:00+02:00", "2024-03-31T05:00:00+02:00"),
            ("2024-04-07T02:30:00+02:00", "2024-04-07T04:30:00+02:00"),
        ], id="berlin-start-in-the-gap-moves-to-its-end"),
        pytest.param("Sun 02:30-03:30 Europe/Berlin", "2024-10-26T00:00:00+02:00", [
            ("2024-10-27T02:30:00+02:00", "2024-10-27T02:30:00+01:00"),
            ("2024-11-03T02:30:00+01:00", "2024-11-03T03:30:00+01:00"),
        ], id="berlin-fall-back-first-occurrence-elapsed-hour"),
        pytest.param("Sat 23:00-03:30 Europe/Berlin", "2024-03-29T00:00:00+01:00", [
            ("2024-03-30T23:00:00+01:00", "2024-03-31T04:30:00+02:00"),
            ("2024-04-06T23:00:00+02:00", "2024-04-07T03:30:00+02:00"),
        ], id="berlin-night-window-across-spring-forward-lasts-its-hours"),
        pytest.param("daily 02:15-03:15 America/New_York", "2024-03-09T00:00:00-05:00", [
            ("2024-03-09T02:15:00-05:00", "2024-03-09T03:15:00-05:00"),
            ("2024-03-10T03:00:00-04:00", "2024-03-10T04:00:00-04:00"),
            ("2024-03-11T02:15:00-04:00", "2024-03-11T03:15:00-04:00"),
        ], id="new-york-spring-forward"),
        pytest.param("daily 01:30-02:30 America/New_York", "2024-11-02T12:00:00-04:00", [
            ("2024-11-03T01:30:00-04:00", "2024-11-03T01:30:00-05:00"),
            ("2024-11-04T01:30:00-05:00", "2024-11-04T02:30:00-05:00"),
        ], id="new-york-fall-back"),
        pytest.param("Tue,Thu 02:00-04:00 Asia/Tokyo", "2024-03-30T00:00:00+09:00", [
            ("2024-04-02T02:00:00+09:00", "2024-04-02T04:00:00+09:00"),
            ("2024-04-04T02:00:00+09:00", "2024-04-04T04:00:00+09:00"),
            ("2024-04-09T02:00:00+09:00", "2024-04-09T04:00:00+09:00"),
        ], id="tokyo-two-days-a-week"),
        pytest.param("Tue 02:00-04:00 Asia/Tokyo; Sat 23:00-01:30 Europe/Berlin",
                     "2024-04-01T00:00:00Z", [
            ("2024-04-02T02:00:00+09:00", "2024-04-02T04:00:00+09:00"),
            ("2024-04-06T23:00:00+02:00", "2024-04-07T01:30:00+02:00"),
            ("2024-04-09T02:00:00+09:00", "2024-04-09T04:00:00+09:00"),
            ("2024-04-13T23:00:00+02:00", "2024-04-14T01:30:00+02:00"),
        ], id="two-windows-a-week-in-two-zones"),
        pytest.param("daily 02:00-03:00 UTC", "2024-01-01T02:00:00Z", [
            ("2024-01-02T02:00:00+00:00", "2024-01-02T03:00:00+00:00"),
        ], id="after-is-exclusive"),
        pytest.param("cron '*/30 * * * *' for 30m Europe/Berlin", "2024-03-31T01:10:00+01:00", [
            ("2024-03-31T01:30:00+01:00", "2024-03-31T03:00:00+02:00"),
            ("2024-03-31T03:00:00+02:00", "2024-03-31T03:30:00+02:00"),
            ("2024-03-31T03:30:00+02:00", "2024-03-31T04:00:00+02:00"),
        ], id="starts-in-the-gap-count-once"),
    ],
)  # fmt: skip
def test_next_windows(specs: str, after: str, expected: list[tuple[str, str]]) -> None:
    found = iter_windows(parse_windows(specs), _at(after))
    assert [_local(next(found)) for _ in expected] == expected
    first = next_window(parse_windows(specs), _at(after))
    assert first is not None and _local(first) == expected[0]


@pytest.mark.parametrize(
    ("cron", "count"),
    [
        pytest.param("0 2 * * 2,4", 60, id="two-weekdays"),
        pytest.param("*/15 9-17 * * mon-fri", 200, id="steps-ranges-names"),
        pytest.param("5 4 1,15 * *", 60, id="dates"),
        pytest.param("0 12 1-7 * 1", 60, id="date-or-weekday"),
        pytest.param("0 6 * jan,jul 0", 60, id="months-sunday"),
        pytest.param("7 */5 * * 7", 60, id="seven-is-sunday"),
        pytest.param("0 0 */10 * *", 60, id="date-step"),
        pytest.param("20-40/10 3 * * *", 60, id="minute-range-step"),
        pytest.param("0 0 29 2 *", 4, id="leap-day"),
    ],
)
def test_cron_starts_agree_with_croniter(cron: str, count: int) -> None:
    croniter = pytest.importorskip("croniter").croniter
    start = datetime(2023, 12, 30, 13, 7)
    reference = croniter(cron, start)
    expected = [reference.get_next(datetime) for _ in range(count)]
    window = MaintenanceWindow(cron, MINUTE, "UTC")
    found = iter_windows([window], pendulum.instance(start, tz="UTC"))
    assert [next(found).start.naive() for _ in range(count)] == expected


NIGHT = "Sat 23:00-01:30 Europe/Berlin"


@pytest.mark.parametrize(
    ("specs", "instant", "window", "left"),
    [
        pytest.param(NIGHT, "2024-04-06T23:30:00+02:00",
                     ("2024-04-06T23:00:00+02:00", "2024-04-07T01:30:00+02:00"), 7200,
                     id="inside"),
        pytest.param(NIGHT, "2024-04-07T01:00:00+02:00",
                     ("2024-04-06T23:00:00+02:00", "2024-04-07T01:30:00+02:00"), 1800,
                     id="inside-a-window-that-began-the-day-before"),
        pytest.param(NIGHT, "2024-04-06T23:00:00+02:00",
                     ("2024-04-06T23:00:00+02:00", "2024-04-07T01:30:00+02:00"), 9000,
                     id="start-is-inside"),
        pytest.param(NIGHT, "2024-04-07T01:30:00+02:00", None, None, id="end-is-outside"),
        pytest.param(NIGHT, "2024-04-10T12:00:00+02:00", None, None, id="between-windows"),
        pytest.param("Sat 23:00-03:30 Europe/Berlin", "2024-03-31T04:15:00+02:00",
                     ("2024-03-30T23:00:00+01:00", "2024-03-31T04:30:00+02:00"), 900,
                     id="spring-forward-night-ends-an-hour-later-on-the-wall"),
        pytest.param("Tue 02:00-04:00 Asia/Tokyo", "2024-04-01T18:00:00Z",
                     ("2024-04-02T02:00:00+09:00", "2024-04-02T04:00:00+09:00"), 3600,
                     id="instant-in-another-zone"),
        pytest.param("daily 01:00-03:00 UTC; daily 02:00-05:00 UTC", "2024-01-01T02:30:00Z",
                     ("2024-01-01T02:00:00+00:00", "2024-01-01T05:00:00+00:00"), 9000,
                     id="overlapping-windows-the-one-ending-last"),
    ],
)  # fmt: skip
def test_window_at_and_seconds_left(
    specs: str, instant: str, window: tuple[str, str] | None, left: float | None
) -> None:
    found = window_at(parse_windows(specs), _at(instant))
    assert (found and _local(found)) == window
    assert (found and (found.end - _at(instant)).total_seconds()) == left


DAILY = parse_windows("daily 02:00-04:00 UTC")


@pytest.mark.parametrize(
    ("last_start", "earliest", "latest", "catchup", "now", "start"),
    [
        pytest.param(None, "2024-05-01T00:00Z", None, True, "2024-05-10T03:00Z",
                     "2024-05-01T02:00:00+00:00", id="first-run-from-start-date"),
        pytest.param(None, "2024-05-01T02:00Z", None, True, "2024-05-10T03:00Z",
                     "2024-05-01T02:00:00+00:00", id="start-date-on-a-start-is-inclusive"),
        pytest.param(None, "2024-05-01T02:30Z", None, True, "2024-05-10T03:00Z",
                     "2024-05-02T02:00:00+00:00", id="start-date-inside-a-window-waits"),
        pytest.param("2024-05-03T02:00Z", "2024-05-01T00:00Z", None, True, "2024-05-10T03:00Z",
                     "2024-05-04T02:00:00+00:00", id="catchup-after-the-last-run"),
        pytest.param("2024-05-03T02:00Z", "2024-05-01T00:00Z", None, False, "2024-05-10T03:00Z",
                     "2024-05-10T02:00:00+00:00", id="no-catchup-skips-ended-keeps-open-one"),
        pytest.param("2024-05-03T02:00Z", "2024-05-01T00:00Z", None, False, "2024-05-10T12:00Z",
                     "2024-05-11T02:00:00+00:00", id="no-catchup-between-windows-next"),
        pytest.param("2024-05-10T02:00Z", "2024-05-01T00:00Z", None, False, "2024-05-10T03:00Z",
                     "2024-05-11T02:00:00+00:00", id="no-catchup-open-window-already-run"),
        pytest.param(None, None, None, False, "2024-05-10T03:00Z",
                     "2024-05-10T02:00:00+00:00", id="no-start-date-open-window"),
        pytest.param(None, None, None, True, "2024-05-10T04:00Z",
                     "2024-05-11T02:00:00+00:00", id="no-start-date-nothing-to-catch-up"),
        pytest.param(None, "2024-06-01T00:00Z", None, False, "2024-05-10T03:00Z",
                     "2024-06-01T02:00:00+00:00", id="start-date-in-the-future"),
        pytest.param("2024-05-03T02:00Z", None, "2024-05-04T02:00Z", True, "2024-05-10T03:00Z",
                     "2024-05-04T02:00:00+00:00", id="end-date-is-inclusive"),
        pytest.param("2024-05-03T02:00Z", None, "2024-05-04T01:59Z", True, "2024-05-10T03:00Z",
                     None, id="past-the-end-date"),
    ],
)  # fmt: skip
def test_next_scheduled_window(
    last_start: str | None,
    earliest: str | None,
    latest: str | None,
    catchup: bool,
    now: str,
    start: str | None,
) -> None:
    found = next_scheduled_window(
        DAILY,
        last_start=last_start and _at(last_start),
        earliest=earliest and _at(earliest),
        latest=latest and _at(latest),
        catchup=catchup,
        now=_at(now),
    )
    assert (found and found.start.isoformat()) == start


@pytest.mark.parametrize(
    ("specs", "count"),
    [
        pytest.param("Tue 02:00-04:00 UTC; Sat 23:00-01:30 Europe/Berlin", 2, id="semicolon"),
        pytest.param("Tue 02:00-04:00 UTC\n\nSat 23:00-01:30 Europe/Berlin\n", 2, id="lines"),
        pytest.param(["Tue 02:00-04:00 UTC", "Sat 23:00-01:30 Europe/Berlin; Sun 01:00-02:00 UTC"],
                     3, id="list-of-texts"),
    ],
)  # fmt: skip
def test_parse_windows(specs: str | list[str], count: int) -> None:
    assert len(parse_windows(specs)) == count


@pytest.mark.parametrize("specs", [pytest.param("", id="empty"), pytest.param(" ; ", id="blank")])
def test_parse_windows_needs_one(specs: str) -> None:
    with pytest.raises(ParamError, match="names no window; give at least one"):
        parse_windows(specs)


@pytest.mark.parametrize(
    ("instant", "left", "inside"),
    [
        pytest.param("2024-05-10T01:59:59Z", 7201.0, False, id="before"),
        pytest.param("2024-05-10T02:00:00Z", 7200.0, True, id="start"),
        pytest.param("2024-05-10T05:30:00+02:00", 1800.0, True, id="other-zone"),
        pytest.param("2024-05-10T04:00:00Z", 0.0, False, id="end"),
        pytest.param("2024-05-10T05:00:00Z", 0.0, False, id="after"),
    ],
)
def test_one_window(instant: str, left: float, inside: bool) -> None:
    window = next_window(DAILY, _at("2024-05-10T00:00:00Z"))
    assert window is not None
    left_then = max(0.0, (window.end - _at(instant)).total_seconds())
    assert (left_then, window.contains(_at(instant))) == (left, inside)


def test_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="instant=2024-01-01T00:00:00 has no time zone"):
        window_at(DAILY, datetime(2024, 1, 1))


def test_spec_must_be_text() -> None:
    with pytest.raises(ParamError, match="param 'windows'=None is not a window spec"):
        MaintenanceWindow.parse(None)  # type: ignore[arg-type]
