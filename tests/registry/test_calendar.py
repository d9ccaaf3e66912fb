from datetime import date

import pytest

from govbus.errors import GovbusError
from registry.calendar import (
    CalendarNotCovered,
    add_working_days,
    covered_years,
    is_working_day,
    working_days_between,
)


def test_covered_years():
    # 2027.json is shipped empty: its notice was not published yet, so 2027 is not covered.
    assert covered_years() == range(2023, 2027)


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2026, 2, 13), True),  # Friday
        (date(2026, 2, 14), True),  # Saturday, make-up working day
        (date(2026, 2, 16), False),  # Monday, Spring Festival
        (date(2026, 2, 23), False),  # Monday, last day of the Spring Festival break
        (date(2026, 2, 28), True),  # Saturday, make-up working day
        (date(2026, 3, 1), False),  # ordinary Sunday
        (date(2026, 3, 2), True),  # ordinary Monday
        (date(2026, 9, 20), True),  # Sunday, make-up working day
        (date(2026, 9, 25), False),  # Friday, Mid-Autumn Festival
        (date(2026, 10, 7), False),  # Wednesday, National Day
        (date(2026, 10, 10), True),  # Saturday, make-up working day
        (date(2023, 1, 1), False),  # Sunday, New Year
        (date(2024, 2, 4), True),  # Sunday, make-up working day
    ],
)
def test_is_working_day(day, working):
    assert is_working_day(day) is working


@pytest.mark.parametrize(
    ("start", "days", "deadline"),
    [
        # Thursday before the 2026 Spring Festival: Fri 13, make-up Sat 14, then 15-23 off,
        # 24-27, make-up Sat 28, Sun 1 March off, 2-4 March.
        (date(2026, 2, 12), 10, date(2026, 3, 4)),
        (date(2026, 2, 12), 2, date(2026, 2, 14)),
        (date(2026, 2, 12), 3, date(2026, 2, 24)),
        # Friday before National Day 2026: make-up Sun 20 Sept, 21-24, Mid-Autumn 25-27 off,
        # 28-30, National Day 1-7 Oct off, 8-9 Oct, make-up Sat 10 Oct, Mon 12 Oct.
        (date(2026, 9, 18), 10, date(2026, 10, 9)),
        (date(2026, 9, 18), 11, date(2026, 10, 10)),
        (date(2026, 9, 18), 12, date(2026, 10, 12)),
        (date(2026, 9, 18), 1, date(2026, 9, 20)),
        # Friday before the 2025 Spring Festival: make-up Sun 26 Jan, Mon 27, then 28 Jan-4 Feb off.
        (date(2025, 1, 24), 3, date(2025, 2, 5)),
        # Friday before National Day 2024: make-up Sun 29 Sept, Mon 30, then 1-7 Oct off.
        (date(2024, 9, 27), 2, date(2024, 9, 30)),
        (date(2024, 9, 27), 3, date(2024, 10, 8)),
        # a start on a holiday: the first deadline day is the first working day after it
        (date(2026, 10, 1), 1, date(2026, 10, 8)),
        (date(2026, 10, 1), 0, date(2026, 10, 1)),
        # across a year boundary: 1-3 Jan 2026 off, Sunday 4 Jan a make-up working day
        (date(2025, 12, 31), 1, date(2026, 1, 4)),
    ],
)
def test_add_working_days(start, days, deadline):
    assert add_working_days(start, days) == deadline
    if days:
        assert working_days_between(start, deadline) == days


def test_working_days_between():
    assert working_days_between(date(2026, 2, 12), date(2026, 3, 4)) == 10
    assert working_days_between(date(2026, 3, 4), date(2026, 2, 12)) == -10
    assert working_days_between(date(2026, 2, 15), date(2026, 2, 15)) == 0
    assert working_days_between(date(2026, 2, 14), date(2026, 2, 23)) == 0


@pytest.mark.parametrize(
    ("year", "working_days"), [(2023, 249), (2024, 251), (2025, 248), (2026, 248)]
)
def test_working_days_in_a_year(year, working_days):
    # 1 January is always a holiday, so counting the days after it counts the whole year
    assert not is_working_day(date(year, 1, 1))
    assert working_days_between(date(year, 1, 1), date(year, 12, 31)) == working_days


def test_outside_the_calendar_is_refused():
    with pytest.raises(CalendarNotCovered) as caught:
        add_working_days(date(2026, 12, 28), 10)
    assert isinstance(caught.value, GovbusError)
    assert str(caught.value) == (
        "2027-01-01 is outside the working-day calendar, which covers 2023-2026; "
        "copy the new year's holidays/YYYY.json from holiday-cn into govbus/data/holidays"
    )
    with pytest.raises(CalendarNotCovered):
        is_working_day(date(2022, 12, 31))
    with pytest.raises(CalendarNotCovered):
        add_working_days(date(2027, 1, 4), 0)
    with pytest.raises(CalendarNotCovered):
        working_days_between(date(2026, 12, 1), date(2027, 1, 4))


def test_negative_days_are_refused():
    with pytest.raises(ValueError):
        add_working_days(date(2026, 3, 2), -1)
