"""Maintenance windows: when a run may start and how long it may work; pure time arithmetic.

A window is a cron expression for its starts, read in the local wall time of an IANA time
zone, plus a duration in elapsed time. It is built directly (`MaintenanceWindow(cron,
duration, timezone)`) or parsed from a spec:

    spec   = DAYS " " HH:MM "-" HH:MM " " ZONE        "Tue,Thu 02:00-04:00 Asia/Tokyo"
           | "cron '" CRON "' for " LENGTH " " ZONE   "cron '0 */6 * * *' for 30m UTC"
    DAYS   = "daily" | "*" | DAY or range, comma separated: "Sat", "Tue,Thu", "Mon-Fri",
             "Fri-Mon" (ranges may wrap the week); DAY is Mon Tue Wed Thu Fri Sat Sun, any case
    HH:MM  = 24-hour local wall time; the end may be 24:00; an end at or before the start
             crosses midnight: "Sat 23:00-01:30 Europe/Berlin" ends on Sunday at 01:30
    LENGTH = [N "d"][N "h"][N "m"], at least one part: "30m", "1h30m", "2d"
    ZONE   = an IANA time zone name: "Europe/Berlin", "America/New_York", "UTC"
Several specs in one text are separated by ";" or new lines (`parse_windows`).

Time rules:
- Starts are computed in local wall time: "02:00 Europe/Berlin" stays 02:00 across DST.
- A start inside a DST gap (02:30 on the spring-forward day in Berlin) moves forward to the
  first valid instant, the end of the gap (03:00 CEST); starts that land on the same instant
  count once.
- An ambiguous start (inside the repeated hour of a fall-back) takes the first occurrence.
- The duration is elapsed time: "22:00-02:00" lasts 4 h, so across a spring-forward it ends
  at 03:00 local time and across a fall-back at 01:00.
- A window is half open, [start, end): at its end instant it is over.
- Cron has 5 fields (minute hour day-of-month month day-of-week) with *, lists, ranges,
  steps and names (JAN, MON); day-of-week 0 and 7 are Sunday; when both day fields are
  restricted (neither starts with "*"), a day matches either one, as in Vixie cron.
- One window's duration may not exceed the shortest wall-clock gap between two of its starts
  (its occurrences would overlap); a DST change can still shorten one gap by the shift.
- Windows of different specs may overlap: `next_window` takes the earliest start and, on a
  tie, the one ending last; `window_at` takes the containing window that ends last (the
  instant stays inside some window until then).
"""

from __future__ import annotations

import bisect
import difflib
import functools
import heapq
import itertools
import re
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

import pendulum

from istio_upgrade.errors import ParamError

PARAM = "windows"  # the parameter every error here names
MINUTE = timedelta(minutes=1)
DAY_MINUTES = 24 * 60
_TICK = timedelta(microseconds=1)  # makes "strictly after x" mean "at or after x + tick"
_DAY_NAMES = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")  # index = cron day of week
_WEEK_FROM_MONDAY = (1, 2, 3, 4, 5, 6, 0)
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# (name, lowest, highest, names) of the five cron fields
_CRON_FIELDS: tuple[tuple[str, int, int, Mapping[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTH_NAMES)}),
    ("day-of-week", 0, 7, {name.lower(): i for i, name in enumerate(_DAY_NAMES)}),
)
_CRON_FIX = "write 5 fields, minute hour day-of-month month day-of-week, e.g. '0 2 * * 2,4'"
# The next start is at most this far away: a Feb 29 start can be 8 years off (2096 -> 2104)
_SEARCH_DAYS = 9 * 366
# Scanning 28 years sees every combination of weekday, date and leap year (within a century)
_GAP_SCAN_FROM = date(2001, 1, 1)
_GAP_SCAN_DAYS = 28 * 365 + 7

_SPEC_FIX = (
    "write 'DAYS HH:MM-HH:MM ZONE' such as 'Tue,Thu 02:00-04:00 Asia/Tokyo', "
    "or \"cron '0 */6 * * *' for 30m UTC\""
)
_DAYS_FIX = "use Mon Tue Wed Thu Fri Sat Sun, lists (Tue,Thu), ranges (Mon-Fri) or 'daily'"
_DAY_SPEC = re.compile(
    r"^(?P<days>.+?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})(?:\s+(?P<zone>\S+))?$"
)
_CRON_SPEC = re.compile(
    r"^cron\s+(?P<q>['\"])(?P<cron>.+?)(?P=q)\s+for\s+(?P<length>\S+)(?:\s+(?P<zone>\S+))?$",
    re.IGNORECASE,
)
_LENGTH = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


@dataclass(frozen=True)
class MaintenanceWindow:
    """When runs may start (cron in the wall time of `timezone`) and how long each may work."""

    cron: str
    duration: timedelta  # elapsed time, whole minutes
    timezone: str  # IANA name

    def __post_init__(self) -> None:
        object.__setattr__(self, "cron", " ".join(str(self.cron).split()))
        _check_window(self.cron, self.duration, self.timezone)

    @classmethod
    def parse(cls, spec: str) -> MaintenanceWindow:
        """A window from its spec ("Tue,Thu 02:00-04:00 Asia/Tokyo"; grammar in the module doc)."""
        if not isinstance(spec, str):
            raise ParamError(PARAM, spec, "is not a window spec (text)", _SPEC_FIX)
        text = " ".join(spec.split())
        try:
            if match := _CRON_SPEC.match(text):
                cron, minutes = match["cron"], _length_minutes(match["length"])
            elif match := _DAY_SPEC.match(text):
                start, end = _clock(match["start"], "start"), _clock(match["end"], "end")
                if end % DAY_MINUTES == start and not (start == 0 and end == DAY_MINUTES):
                    raise ParamError(
                        PARAM,
                        spec,
                        f"starts and ends at {match['start']}",
                        "give different times; for a whole day write 00:00-24:00",
                    )
                cron = f"{start % 60} {start // 60} * * {_days_cron(match['days'])}"
                minutes = end - start if end > start else end + DAY_MINUTES - start
            else:
                raise ParamError(PARAM, spec, "is not a maintenance window", _SPEC_FIX)
            if not match["zone"]:
                raise ParamError(
                    PARAM,
                    spec,
                    "has no time zone",
                    f"add an IANA time zone name, e.g. '{text} Europe/Berlin' or '{text} UTC'",
                )
            return cls(cron, timedelta(minutes=minutes), match["zone"])
        except ParamError as error:  # name the whole spec, keep the problem and the fix
            raise ParamError(PARAM, spec, error.problem, error.fix) from None

    @property
    def label(self) -> str:
        """The window as a spec `parse` reads back: "Tue,Thu 02:00-04:00 Asia/Tokyo"."""
        cron = _parse_cron(self.cron)
        minutes = self.duration // MINUTE
        every_date = cron.days_of_month == _ALL_DAYS_OF_MONTH and cron.months == _ALL_MONTHS
        if every_date and len(cron.minutes_of_day) == 1:
            start = cron.minutes_of_day[0]
            if minutes < DAY_MINUTES or (minutes == DAY_MINUTES and start == 0):
                # every date matches; with both day fields restricted, so does every weekday
                days = _ALL_DAYS_OF_WEEK if cron.day_or else cron.days_of_week
                end = (start + minutes) % DAY_MINUTES or (DAY_MINUTES if start == 0 else 0)
                return f"{_days_text(days)} {_hhmm(start)}-{_hhmm(end)} {self.timezone}"
        return f"cron '{self.cron}' for {_length_text(self.duration)} {self.timezone}"

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Window:
    """One occurrence of a maintenance window: [start, end) in UTC, and the spec it comes from."""

    start: pendulum.DateTime
    end: pendulum.DateTime
    spec: MaintenanceWindow

    def contains(self, instant: datetime) -> bool:
        """Whether the instant lies in [start, end)."""
        return self.start <= _utc(instant, "instant") < self.end

    def __str__(self) -> str:
        zone = self.spec.timezone
        start, end = self.start.in_timezone(zone), self.end.in_timezone(zone)
        return f"{start.isoformat()}..{end.isoformat()} ({self.spec.label})"


def parse_windows(specs: str | Sequence[str | MaintenanceWindow]) -> tuple[MaintenanceWindow, ...]:
    """Windows from specs (each text may hold several, split by ";" or new lines) or windows."""
    items = [specs] if isinstance(specs, str) else list(specs)
    windows = tuple(
        piece if isinstance(piece, MaintenanceWindow) else MaintenanceWindow.parse(piece)
        for item in items
        for piece in ([item] if isinstance(item, MaintenanceWindow) else re.split(r"[;\n]", item))
        if isinstance(piece, MaintenanceWindow) or piece.strip()
    )
    if not windows:
        raise ParamError(
            PARAM, specs, "names no window", "give at least one, e.g. 'Sat 02:00-04:00 UTC'"
        )
    return windows


def describe(windows: Sequence[MaintenanceWindow]) -> str:
    """All windows as one line of specs: "Tue,Thu 02:00-04:00 Asia/Tokyo; Sat 23:00-01:30 UTC"."""
    return "; ".join(window.label for window in windows)


def iter_windows(windows: Sequence[MaintenanceWindow], after: datetime) -> Iterator[Window]:
    """Every window starting strictly after `after`, by start (on a tie, the longest first)."""
    after_utc = _utc(after, "after")
    return heapq.merge(
        *(_occurrences(window, after_utc) for window in windows),
        key=lambda w: (w.start, -w.end.timestamp()),
    )


def next_window(windows: Sequence[MaintenanceWindow], after: datetime) -> Window | None:
    """The earliest window starting strictly after `after`; None only when there is no window."""
    return next(iter_windows(windows, after), None)


def window_at(windows: Sequence[MaintenanceWindow], instant: datetime) -> Window | None:
    """The window containing the instant (one that started before it included); None outside."""
    at = _utc(instant, "instant")
    containing: list[Window] = []
    for window in windows:
        # a window containing `at` starts in (at - duration, at]
        for occurrence in _occurrences(window, at - window.duration):
            if occurrence.start > at:
                break
            containing.append(occurrence)
    return max(containing, key=lambda w: (w.end, w.start), default=None)


def next_scheduled_window(
    windows: Sequence[MaintenanceWindow],
    *,
    last_start: datetime | None,
    earliest: datetime | None,
    latest: datetime | None,
    catchup: bool,
    now: datetime,
) -> Window | None:
    """The window the next scheduled run covers; None when it would start after `latest`.

    After the last scheduled run's window comes the next one; the first run takes the first
    window starting at or after `earliest` (the DAG's start date). Without catchup (or without
    a start date) windows that have already ended are skipped, but the window we are in now
    is still scheduled: its run starts at once, and the window's end tells it how long it has.
    """
    if not windows:
        return None
    floors: list[pendulum.DateTime] = []  # the next window starts strictly after all of these
    if earliest is not None:
        floors.append(_utc(earliest, "earliest") - _TICK)
    if last_start is not None:
        floors.append(_utc(last_start, "last_start"))
    skip_ended = not catchup or not floors
    now_utc = _utc(now, "now")
    if skip_ended:
        # windows starting before this have all ended: no need to walk through them
        floors.append(now_utc - max(window.duration for window in windows))
    floor = max(floors)
    for window in iter_windows(windows, floor):
        if skip_ended and window.end <= now_utc:
            continue
        if latest is not None and window.start > _utc(latest, "latest"):
            return None
        return window
    return None


# --- cron -------------------------------------------------------------------------------

_ALL_DAYS_OF_MONTH = frozenset(range(1, 32))
_ALL_MONTHS = frozenset(range(1, 13))
_ALL_DAYS_OF_WEEK = frozenset(range(7))


class _CronSyntax(ValueError):
    """A cron expression does not parse; the message says which field and why."""


@dataclass(frozen=True)
class _Cron:
    """A parsed cron expression: what it matches, in local wall time."""

    minutes_of_day: tuple[int, ...]  # sorted: hour * 60 + minute
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday
    day_or: bool  # both day fields restricted: a day matches either (Vixie cron)

    def day_matches(self, day: date) -> bool:
        """Whether the cron fires on this calendar day (at its times of day)."""
        if day.month not in self.months:
            return False
        by_date = day.day in self.days_of_month
        by_weekday = (day.weekday() + 1) % 7 in self.days_of_week
        return (by_date or by_weekday) if self.day_or else (by_date and by_weekday)

    def next_after(self, wall: datetime) -> datetime | None:
        """The first start strictly after a naive wall time; None if none within 9 years."""
        first = wall.replace(second=0, microsecond=0) + MINUTE
        day, minute = first.date(), first.hour * 60 + first.minute
        for _ in range(_SEARCH_DAYS):
            if self.day_matches(day):
                i = bisect.bisect_left(self.minutes_of_day, minute)
                if i < len(self.minutes_of_day):
                    return datetime.combine(day, time()) + self.minutes_of_day[i] * MINUTE
            day, minute = day + timedelta(days=1), 0
        return None


@functools.lru_cache(maxsize=256)
def _parse_cron(expression: str) -> _Cron:
    fields = expression.split()
    if len(fields) != 5:
        raise _CronSyntax(f"has {len(fields)} fields instead of 5")
    minutes, hours, dates, months, weekdays = (
        _cron_field(text, *spec) for text, spec in zip(fields, _CRON_FIELDS, strict=True)
    )
    return _Cron(
        minutes_of_day=tuple(sorted(h * 60 + m for h in hours for m in minutes)),
        days_of_month=frozenset(dates),
        months=frozenset(months),
        days_of_week=frozenset(d % 7 for d in weekdays),
        day_or=not fields[2].startswith("*") and not fields[4].startswith("*"),
    )


def _cron_field(text: str, name: str, low: int, high: int, names: Mapping[str, int]) -> set[int]:
    def value(token: str) -> int:
        digits = token.isascii() and token.isdigit()
        number = names.get(token.lower(), int(token) if digits else None)
        if number is None or not low <= number <= high:
            raise _CronSyntax(f"{name} {token!r} is not in {low}-{high}")
        return number

    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        if slash and not (step_text.isascii() and step_text.isdigit() and int(step_text) > 0):
            raise _CronSyntax(f"{name} step in {item!r} is not a positive number")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first, last = (value(token) for token in base.split("-", 1))
            if first > last:
                raise _CronSyntax(f"{name} range {base!r} runs backwards")
        else:
            first = value(base)
            last = high if slash else first
        values.update(range(first, last + 1, int(step_text) if slash else 1))
    return values


@functools.lru_cache(maxsize=256)
def _shortest_gap(expression: str) -> timedelta | None:
    """Shortest wall-clock time between two consecutive starts; None if it never starts."""
    cron = _parse_cron(expression)
    days = [
        offset
        for offset in range(_GAP_SCAN_DAYS)
        if cron.day_matches(_GAP_SCAN_FROM + timedelta(days=offset))
    ]
    if not days or not cron.minutes_of_day:
        return None
    times = cron.minutes_of_day
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    spread = times[-1] - times[0]  # a day's last start to the first start of the next day
    gaps += [(d2 - d1) * DAY_MINUTES - spread for d1, d2 in itertools.pairwise(days)]
    return min(gaps, default=_GAP_SCAN_DAYS * DAY_MINUTES) * MINUTE


# --- checks and spec pieces ---------------------------------------------------------------


def _check_window(cron: str, duration: timedelta, timezone: str) -> None:
    try:
        _parse_cron(cron)
    except _CronSyntax as error:
        raise ParamError(
            PARAM, cron, f"is not a cron expression: {error} (in '{cron}')", _CRON_FIX
        ) from None
    gap = _shortest_gap(cron)
    if gap is None:
        raise ParamError(
            PARAM,
            cron,
            f"never starts: no calendar day matches cron '{cron}'",
            "check day-of-month against month (Feb 30 never comes; Feb 29 every 4 years)",
        )
    _zone(timezone)
    if not isinstance(duration, timedelta):
        raise ParamError(
            PARAM,
            duration,
            "is not a duration",
            "pass a datetime.timedelta, e.g. timedelta(hours=2)",
        )
    if duration <= timedelta(0):
        raise ParamError(
            PARAM,
            str(duration),
            f"is a window length of {duration}, not a positive one",
            "give the window a length, e.g. timedelta(hours=2) or '02:00-04:00'",
        )
    if duration % MINUTE:
        raise ParamError(
            PARAM,
            str(duration),
            f"is a window length of {duration}, not whole minutes",
            "round it to minutes, as cron starts are",
        )
    if duration > gap:
        raise ParamError(
            PARAM,
            f"cron '{cron}' for {_length_text(duration)}",
            f"lasts {_length_text(duration)}, longer than the {_length_text(gap)} between two "
            f"of its starts, so its windows would overlap",
            f"shorten it to at most {_length_text(gap)} or start less often",
        )


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo:
    """The IANA time zone, or a ParamError that suggests the nearest name."""
    try:
        return pendulum.timezone(name)
    except (ValueError, OSError):  # unknown names, directories ('Europe'), bad paths
        pass
    known = zoneinfo.available_timezones()
    by_case = {zone.lower(): zone for zone in known}
    close = [by_case[name.lower()]] if name.lower() in by_case else []
    close = close or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "e.g. 'Europe/Berlin' or 'UTC'"
    raise ParamError(
        PARAM, name, f"has unknown time zone {name!r}", f"use an IANA time zone name; {hint}"
    )


def _clock(text: str, which: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    limit = DAY_MINUTES if which == "end" else DAY_MINUTES - 1
    if minutes > 59 or hours * 60 + minutes > limit:
        raise ParamError(
            PARAM,
            text,
            f"has {which} time {text!r} outside 00:00-{_hhmm(limit)}",
            "write 24-hour HH:MM, e.g. 02:00-04:00",
        )
    return hours * 60 + minutes


def _days_cron(text: str) -> str:
    """The day-of-week cron field for "Tue,Thu" ("2,4"), "Mon-Fri" ("1-5"), "daily" ("*")."""
    compact = text.replace(" ", "")
    if compact.lower() in ("daily", "*"):
        return "*"
    numbers = {name.lower(): i for i, name in enumerate(_DAY_NAMES)}
    days: set[int] = set()
    for item in compact.split(","):
        ends = item.lower().split("-")
        if len(ends) > 2 or not all(end in numbers for end in ends):
            raise ParamError(PARAM, text, f"has unknown day {item!r}", _DAYS_FIX)
        first, last = numbers[ends[0]], numbers[ends[-1]]
        days.update(d % 7 for d in range(first, last + 1 + (7 if last < first else 0)))
    return "*" if len(days) == 7 else _number_ranges(sorted(days))


def _number_ranges(numbers: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


def _days_text(days: frozenset[int]) -> str:
    """{2, 4} -> "Tue,Thu"; {1..5} -> "Mon-Fri"; {5, 6, 0, 1} -> "Fri-Mon"; all -> "daily"."""
    if len(days) == 7:
        return "daily"
    runs: list[list[int]] = []  # positions in the week starting Monday
    for position, day in enumerate(_WEEK_FROM_MONDAY):
        if day not in days:
            continue
        if runs and runs[-1][-1] == position - 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][-1] == 6:  # a run across Sunday night
        runs = [*runs[1:-1], runs[-1] + runs[0]]
    names = [_DAY_NAMES[day] for day in _WEEK_FROM_MONDAY]
    return ",".join(
        f"{names[r[0]]}-{names[r[-1]]}" if len(r) > 2 else ",".join(names[p] for p in r)
        for r in runs
    )


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _length_minutes(text: str) -> int:
    match = _LENGTH.match(text.lower())
    if not text or not match:
        raise ParamError(
            PARAM, text, f"has length {text!r}", "write it like 30m, 1h30m or 2d (d, h, m)"
        )
    days, hours, minutes = (int(part) if part else 0 for part in match.groups())
    return days * DAY_MINUTES + hours * 60 + minutes


def _length_text(duration: timedelta) -> str:
    """timedelta(hours=26, minutes=30) -> "1d2h30m"; under a minute -> "0m"."""
    total = duration // MINUTE
    parts = ((total // DAY_MINUTES, "d"), (total % DAY_MINUTES // 60, "h"), (total % 60, "m"))
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0m"


# --- wall time to instants ----------------------------------------------------------------


def _utc(moment: datetime, name: str) -> pendulum.DateTime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name}={moment.isoformat()} has no time zone; pass an aware datetime")
    return pendulum.instance(moment).in_timezone("UTC")


def _occurrences(window: MaintenanceWindow, after: pendulum.DateTime) -> Iterator[Window]:
    """The window's occurrences starting strictly after `after`, in order."""
    zone = _zone(window.timezone)
    cron = _parse_cron(window.cron)
    # start a day early in wall time: offsets differ by hours at most, and the filter below
    # drops what is not strictly after `after`
    wall = datetime.fromtimestamp(after.timestamp(), zone).replace(tzinfo=None) - timedelta(days=1)
    previous: pendulum.DateTime | None = None
    while (found := cron.next_after(wall)) is not None:
        wall = found
        start = _first_instant(wall, zone)
        if start > after and (previous is None or start > previous):
            previous = start
            yield Window(start, start + window.duration, window)


def _first_instant(wall: datetime, zone: tzinfo) -> pendulum.DateTime:
    """The first instant showing this wall time, or (in a DST gap) the end of the gap."""
    first = wall.replace(tzinfo=zone, fold=0)  # fall-back: fold=0 is the first occurrence
    if datetime.fromtimestamp(first.timestamp(), zone).replace(tzinfo=None) == wall:
        return pendulum.from_timestamp(first.timestamp())
    # In a gap fold=0 reads the wall time with the offset before the change (an instant after
    # it) and fold=1 with the offset after (an instant before it): the change lies between.
    before, after = int(wall.replace(tzinfo=zone, fold=1).timestamp()), int(first.timestamp())
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) >= wall:
            after = middle
        else:
            before = middle
    return pendulum.from_timestamp(after)
