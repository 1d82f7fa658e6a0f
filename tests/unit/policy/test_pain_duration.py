"""Pain start, pain days, chronic pain and the current pain."""

from datetime import date, datetime, timedelta, timezone

import pytest
from clinical_events import AS_OF, History, day, determine

from shared.contract import Status

AS_OF_DATE = date(2026, 5, 31)  # the UTC date of AS_OF


@pytest.mark.parametrize(
    ("days", "status"), [(89, Status.NOT_CHRONIC), (90, Status.UNDER_TREATMENT)]
)
def test_pain_is_chronic_from_90_pain_days(days, status):
    history = History()
    history.condition(day(0), AS_OF_DATE - timedelta(days=days))
    determination = determine(history)
    assert (determination.pain_days, determination.status) == (days, status)
    if status is Status.NOT_CHRONIC:
        assert determination.reasons[0].code == "status.not_chronic"
        assert "pain for 89 days" in determination.reasons[0].text


def test_no_pain_start_at_all_is_not_chronic():
    history = History()
    history.score(day(-200), 0)
    history.assess(day(-200), "physical_exam")
    determination = determine(history)
    assert (determination.pain_start, determination.pain_days) == (None, None)
    assert determination.status is Status.NOT_CHRONIC
    assert "pain.no_start" in [reason.code for reason in determination.reasons]


def test_pain_start_is_the_onset_of_the_latest_condition_by_time_not_arrival():
    history = History()
    history.condition(day(10), date(2025, 1, 1))
    history.condition(day(5), date(2024, 1, 1))
    history.score(day(-900), 8)
    assert determine(history).pain_start == date(2025, 1, 1)


def test_without_condition_pain_starts_at_the_first_score_of_1_or_more():
    history = History()
    history.score(day(-120), 0.5)  # below 1: no pain yet
    history.score(day(-100), 10, instrument="vas")  # 1 on the 0-10 scale
    history.start(day(-90), "t-1", "gabapentin", 300)
    determination = determine(history)
    assert determination.pain_start == day(-100).date()
    assert determination.pain_days == 250


def test_without_condition_pain_starts_at_the_first_trial_when_it_is_earlier():
    history = History()
    history.score(day(-100), 3)
    history.start(day(-110), "t-1", "ketamine", 300)
    assert determine(history).pain_start == day(-110).date()


def test_pain_days_count_utc_calendar_dates():
    history = History()
    history.condition(day(0), date(2026, 3, 1))
    late_evening = datetime(2026, 5, 31, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert determine(history, as_of=late_evening).pain_days == 92  # 2026-06-01 in UTC
    history = History()
    history.score(datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2))), 5)
    assert determine(history, as_of=late_evening).pain_start == date(2026, 3, 2)


def test_current_pain_is_the_median_of_the_last_30_days_excluding_their_start():
    history = History()
    history.condition(day(0), date(2025, 1, 1))
    history.score(AS_OF - timedelta(days=30), 10)  # just outside (T - 30 days, T]
    history.score(AS_OF - timedelta(days=30) + timedelta(seconds=1), 4)
    history.score(AS_OF, 7)
    assert determine(history).current_pain == 5.5


def test_current_pain_falls_back_to_the_latest_score_before_t():
    history = History()
    history.condition(day(0), date(2025, 1, 1))
    history.score(AS_OF - timedelta(days=40), 3)
    history.score(AS_OF - timedelta(days=30), 6)
    determination = determine(history)
    assert determination.current_pain == 6
    assert "pain.current_from_latest" in [reason.code for reason in determination.reasons]


def test_current_pain_without_any_score_is_unknown():
    history = History()
    history.condition(day(0), date(2025, 1, 1))
    determination = determine(history)
    assert determination.current_pain is None
    assert "pain.current_unknown" in [reason.code for reason in determination.reasons]


def test_one_pain_day_reads_singular():
    history = History()
    history.condition(day(0), AS_OF_DATE - timedelta(days=1))
    determination = determine(history)
    texts = " ".join(reason.text for reason in determination.reasons)
    assert determination.pain_days == 1
    assert "pain for 1 day since" in texts
    assert "1 days" not in texts
