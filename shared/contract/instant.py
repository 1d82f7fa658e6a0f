"""Event times as the contract defines them: RFC 3339 date-times, bounded, exact past microseconds.

`parse_time` reads a `time` (RFC 3339 `date-time` with an offset, `T`/`Z` in either case) and
`parse_date` an `onset_date` (`full-date`); both refuse what falls outside the contract's bounds
(1900-01-01T00:00:00Z .. 9999-12-31T00:00:00Z in UTC, 1900-01-01 .. 9999-12-31), so no later date
arithmetic (a 90-day window, a conversion to UTC) can overflow.

Python's datetime stops at microseconds; RFC 3339 does not. A time with more fraction digits is an
`Instant`: a datetime (truncated to the microsecond) that also carries the digits past the sixth
and compares by them, so `00:00:00.0000001Z` is after `00:00:00Z` and does not count as of it.
Plain datetimes (every time with at most six fraction digits) stay plain: nothing is slower for
them. Differences of instants are `Span`s, timedeltas that compare exactly against whole
durations (a 28-day minimum), which is all the policy asks of them.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

TIME_MIN = datetime(1900, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9999, 12, 31, tzinfo=UTC)
DATE_MIN = date(1900, 1, 1)
DATE_MAX = date(9999, 12, 31)

TIME_REASON = "must be an RFC 3339 timestamp with an offset (e.g. Z or +01:00)"
TIME_RANGE_REASON = "must fall within 1900-01-01T00:00:00Z .. 9999-12-31T00:00:00Z (in UTC)"
DATE_REASON = "must be a date as YYYY-MM-DD"
DAY_REASON = "must be a real calendar day, as YYYY-MM-DD"
DATE_RANGE_REASON = "must fall within 1900-01-01 .. 9999-12-31"

# RFC 3339 section 5.6 `date-time`: `T` and `Z` in either case (section 5.6's note), no space.
RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
FULL_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class TimeError(ValueError):
    """A time or date the contract refuses; the message is the reason (never the value)."""


def _sub(other: datetime) -> str:
    return other.sub if isinstance(other, Instant) else ""


class Instant(datetime):
    """A datetime with fraction digits past the microsecond (`sub`, no trailing zeros).

    Digit strings without trailing zeros order as the fractions they write, so instants order by
    (the datetime, `sub`), a plain datetime having an empty `sub`. Python gives the reflected
    comparison of a subclass priority, so `plain <= instant` is decided here too.
    """

    sub: str = ""  # a default, so that what datetime's own methods build is still an Instant

    @classmethod
    def of(cls, moment: datetime, sub: str) -> datetime:
        """`moment` and `sub` as one instant; the plain datetime when `sub` is empty."""
        if not sub:
            return moment
        instant = cls(
            moment.year,
            moment.month,
            moment.day,
            moment.hour,
            moment.minute,
            moment.second,
            moment.microsecond,
            moment.tzinfo,
            fold=moment.fold,
        )
        instant.sub = sub
        return instant

    def _base(self) -> datetime:
        return datetime.combine(self.date(), self.timetz())

    def _key(self, other: object):
        if not isinstance(other, datetime):
            return NotImplemented
        theirs = other._base() if isinstance(other, Instant) else other
        return self._base(), self.sub, theirs, _sub(other)

    def __eq__(self, other: object) -> bool:
        key = self._key(other)
        return key is NotImplemented or (key[0] == key[2] and key[1] == key[3])

    def __ne__(self, other: object) -> bool:
        key = self._key(other)
        return key is NotImplemented or not (key[0] == key[2] and key[1] == key[3])

    def __lt__(self, other: object) -> bool:
        key = self._key(other)
        if key is NotImplemented:
            return NotImplemented
        return key[0] < key[2] or (key[0] == key[2] and key[1] < key[3])

    def __le__(self, other: object) -> bool:
        key = self._key(other)
        if key is NotImplemented:
            return NotImplemented
        return key[0] < key[2] or (key[0] == key[2] and key[1] <= key[3])

    def __gt__(self, other: object) -> bool:
        key = self._key(other)
        if key is NotImplemented:
            return NotImplemented
        return key[0] > key[2] or (key[0] == key[2] and key[1] > key[3])

    def __ge__(self, other: object) -> bool:
        key = self._key(other)
        if key is NotImplemented:
            return NotImplemented
        return key[0] > key[2] or (key[0] == key[2] and key[1] >= key[3])

    def __hash__(self) -> int:
        return hash((self._base(), self.sub)) if self.sub else hash(self._base())

    def __add__(self, other: object):
        if isinstance(other, timedelta):
            return Instant.of(self._base() + other, self.sub)
        return NotImplemented

    __radd__ = __add__

    def __sub__(self, other: object):
        if isinstance(other, timedelta):
            return Instant.of(self._base() - other, self.sub)
        if isinstance(other, datetime):
            return Span.between(self, other)
        return NotImplemented

    def __rsub__(self, other: object):
        if isinstance(other, datetime):
            return Span.between(other, self)
        return NotImplemented

    def astimezone(self, tz=None):
        return Instant.of(self._base().astimezone(tz), self.sub)

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        text = self._base().isoformat(sep, "microseconds")
        cut = len("YYYY-MM-DDTHH:MM:SS.ffffff")
        return text[:cut] + self.sub + text[cut:]

    def __str__(self) -> str:
        return self.isoformat(" ")

    def __repr__(self) -> str:
        return f"Instant({self.isoformat()!r})"

    def __reduce_ex__(self, protocol):
        return (Instant.of, (self._base(), self.sub))


class Span(timedelta):
    """`end - start` for instants: the microsecond difference and the sign of what lies below.

    Against a timedelta D (whole microseconds), the exact difference is at least D exactly when
    the microsecond difference exceeds D, or equals it and the digits below are not negative.
    """

    below: int = 0  # -1, 0 or 1: the sign of (end's digits past the microsecond - start's)

    @classmethod
    def between(cls, end: datetime, start: datetime) -> timedelta:
        end_base = end._base() if isinstance(end, Instant) else end
        start_base = start._base() if isinstance(start, Instant) else start
        difference = end_base - start_base
        end_sub, start_sub = _sub(end), _sub(start)
        below = (end_sub > start_sub) - (end_sub < start_sub)
        if not below:
            return difference
        span = cls(difference.days, difference.seconds, difference.microseconds)
        span.below = below
        return span

    def _key(self, other: object):
        if not isinstance(other, timedelta):
            return NotImplemented
        mine = timedelta(self.days, self.seconds, self.microseconds)
        theirs = timedelta(other.days, other.seconds, other.microseconds)
        return (mine, self.below), (theirs, getattr(other, "below", 0))

    def __eq__(self, other: object) -> bool:
        key = self._key(other)
        return key is NotImplemented or key[0] == key[1]

    def __ne__(self, other: object) -> bool:
        key = self._key(other)
        return key is NotImplemented or key[0] != key[1]

    def __lt__(self, other: object) -> bool:
        key = self._key(other)
        return key if key is NotImplemented else key[0] < key[1]

    def __le__(self, other: object) -> bool:
        key = self._key(other)
        return key if key is NotImplemented else key[0] <= key[1]

    def __gt__(self, other: object) -> bool:
        key = self._key(other)
        return key if key is NotImplemented else key[0] > key[1]

    def __ge__(self, other: object) -> bool:
        key = self._key(other)
        return key if key is NotImplemented else key[0] >= key[1]

    def __hash__(self) -> int:
        return hash((timedelta(self.days, self.seconds, self.microseconds), self.below))


def in_bounds(moment: datetime) -> bool:
    """Whether an aware datetime falls within the contract's bounds, in UTC."""
    if 1900 < moment.year < 9999:  # no offset (under a day) can carry these out
        return True
    try:
        return TIME_MIN <= moment <= TIME_MAX
    except OverflowError:  # an offset carrying a year-1 or year-9999 time off the calendar
        return False


def parse_time(text: str) -> datetime:
    """An RFC 3339 `date-time` with an offset, within the bounds; raises TimeError otherwise."""
    syntax = RFC3339.match(text)
    if syntax is None:
        raise TimeError(TIME_REASON)
    fraction = syntax.group(1) or ""
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:  # e.g. 2026-02-30, an hour of 25, a leap second (23:59:60)
        raise TimeError(TIME_REASON) from None
    if not in_bounds(moment):
        raise TimeError(TIME_RANGE_REASON)
    sub = fraction[7:].rstrip("0")
    if sub and moment == TIME_MAX:  # 9999-12-31T00:00:00.0000001Z is past the bound
        raise TimeError(TIME_RANGE_REASON)
    return Instant.of(moment, sub)


def parse_date(text: str) -> date:
    """An RFC 3339 `full-date` within the bounds; raises TimeError otherwise."""
    if not FULL_DATE.match(text):
        raise TimeError(DATE_REASON)
    try:
        day = date.fromisoformat(text)
    except ValueError:  # e.g. 2026-02-30, or the year 0000
        raise TimeError(DAY_REASON) from None
    if not DATE_MIN <= day <= DATE_MAX:
        raise TimeError(DATE_RANGE_REASON)
    return day
