"""When a worker behind a backlog decides: a fifth of its time at most, predicted, not looked
back on (a pass re-reads whole histories, which grow during a backfill)."""

from __future__ import annotations

import pytest

from services.classifier.decisions import DECISION_SHARE, BacklogShare, PassCost, decision_due


def test_nothing_is_decided_before_the_delay():
    assert not decision_due(waited=4.9, delay=5, expected_pass_seconds=0.0)
    assert decision_due(waited=5.0, delay=5, expected_pass_seconds=0.0)


def test_a_long_pass_waits_four_times_its_expected_duration():
    assert not decision_due(waited=39.9, delay=5, expected_pass_seconds=10)
    assert decision_due(waited=DECISION_SHARE * 10, delay=5, expected_pass_seconds=10)


def test_the_cost_per_event_is_learnt_from_passes_large_enough():
    cost = PassCost()
    assert cost.expected(1_000_000) == pytest.approx(PassCost.PRIOR * 1_000_000)
    cost.observe(events=10, seconds=5.0)  # too small to say anything
    assert cost.seconds_per_event == PassCost.PRIOR
    for _ in range(20):
        cost.observe(events=100_000, seconds=1.5)
    assert cost.expected(1_000_000) == pytest.approx(15.0, rel=1e-3)


def test_backlog_work_leaves_the_rest_of_the_share_idle_while_fresh_events_arrive():
    share = BacklogShare(0.5)
    assert share.spent(0.04, now=10.0) == 0.0  # no fresh event yet: the backlog runs flat out
    share.fresh(10.0)
    assert share.spent(0.04, now=10.1) == pytest.approx(0.04)  # as long idle as busy
    assert share.idle_for(10.12) == pytest.approx(0.02)
    assert share.idle_for(10.2) == 0.0
    assert share.spent(0.04, now=11.2) == 0.0  # no fresh event for over a second: flat out again
    quarter = BacklogShare(0.25)
    quarter.fresh(0.0)
    assert quarter.spent(0.01, now=0.5) == pytest.approx(0.03)


def test_a_share_of_one_never_idles():
    share = BacklogShare(1.0)
    share.fresh(1.0)
    assert share.spent(5.0, now=1.0) == 0.0 and share.idle_for(1.0) == 0.0
