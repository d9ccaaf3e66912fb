"""The official working-day calendar: weekends, public holidays and make-up working days (调休).

Deadlines in the sharing rules are counted in working days ("answer within 10 working days"). A
day listed in the State Council notice with ``isOffDay: true`` is a holiday even on a weekday; one
listed with ``isOffDay: false`` is a working day even on a Saturday or Sunday; any other day is a
working day from Monday to Friday. The notices come one year at a time, so a date in a year without
a published notice raises :class:`CalendarNotCovered` instead of being guessed from weekdays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from importlib.resources import files

from govbus.errors import GovbusError

__all__ = [
    "CalendarNotCovered",
    "add_working_days",
    "covered_years",
    "is_working_day",
    "working_days_between",
]


class CalendarNotCovered(GovbusError, ValueError):
    """A date falls in a year whose holiday notice is not in the shipped calendar."""

    def __init__(self, day: date, first: int, last: int) -> None:
        self.day = day
        super().__init__(
            f"{day.isoformat()} is outside the working-day calendar, which covers {first}-{last}; "
            "copy the new year's holidays/YYYY.json from holiday-cn into govbus/data/holidays"
        )


@dataclass(frozen=True)
class _Calendar:
    first_year: int
    last_year: int
    #: the days a notice names: True = off (holiday), False = make-up working day
    listed: dict[date, bool]


@cache
def _calendar() -> _Calendar:
    listed: dict[date, bool] = {}
    years: list[int] = []
    folder = files("govbus").joinpath("data").joinpath("holidays")
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".json"):
            continue
        notice = json.loads(entry.read_text(encoding="utf-8"))
        # An empty file is a year whose notice was not yet published: not covered.
        if not notice["days"]:
            continue
        years.append(int(notice["year"]))
        for day in notice["days"]:
            listed[date.fromisoformat(day["date"])] = bool(day["isOffDay"])

    if years != list(range(years[0], years[-1] + 1)):
        raise RuntimeError(f"holiday calendar has a gap: years {years}")
    return _Calendar(first_year=years[0], last_year=years[-1], listed=listed)


def covered_years() -> range:
    """The years the calendar can answer for (2023-2026 as shipped)."""
    calendar = _calendar()
    return range(calendar.first_year, calendar.last_year + 1)


def _working(day: date, calendar: _Calendar) -> bool:
    if not calendar.first_year <= day.year <= calendar.last_year:
        raise CalendarNotCovered(day, calendar.first_year, calendar.last_year)
    off = calendar.listed.get(day)
    return day.weekday() < 5 if off is None else not off


def is_working_day(day: date) -> bool:
    """Whether government offices work on ``day``."""
    return _working(day, _calendar())


def add_working_days(start: date, days: int) -> date:
    """The deadline ``days`` working days after ``start``; ``start`` itself is not counted.

    With ``days`` 0 the answer is ``start``. The deadline is always a working day.
    """
    if days < 0:
        raise ValueError(f"days must be 0 or more, got {days}")
    calendar = _calendar()
    _working(start, calendar)  # refuse a start outside the calendar even when days is 0

    day = start
    while days:
        day += timedelta(days=1)
        if _working(day, calendar):
            days -= 1
    return day


def working_days_between(start: date, end: date) -> int:
    """The working days after ``start`` up to and including ``end``; negative if ``end`` is
    earlier. ``working_days_between(d, add_working_days(d, n)) == n``."""
    if end < start:
        return -working_days_between(end, start)
    calendar = _calendar()
    _working(start, calendar)

    count = 0
    day = start
    while day < end:
        day += timedelta(days=1)
        count += _working(day, calendar)
    return count
