"""The cache of parsed histories: bounded by parsed events, least recently decided out first."""

from __future__ import annotations

from services.classifier.history import PatientHistory
from services.classifier.partition import ParsedCache


def history(events: int) -> PatientHistory:
    kept = PatientHistory.keeping_parsed()
    kept.raw = {f"s\x1fe{n}": "{}" for n in range(events)}
    return kept


def test_the_least_recently_decided_histories_are_dropped_beyond_the_limit():
    cache = ParsedCache(events=5)
    first, second, third = history(2), history(2), history(2)
    cache.keep(first)
    cache.keep(second)
    cache.keep(first)  # decided again: now the most recent
    cache.keep(third)

    assert second not in cache and second._parsed is None
    assert first in cache and third in cache and first._parsed is not None
    assert cache.events == 4


def test_a_history_bigger_than_the_limit_is_not_kept():
    cache = ParsedCache(events=3)
    big = history(4)
    cache.keep(big)
    assert big not in cache and big._parsed is None and cache.events == 0


def test_a_zero_limit_keeps_nothing():
    cache = ParsedCache(events=0)
    one = history(1)
    cache.decided(one, live=True)
    assert one._parsed is None and cache.events == 0


def test_a_backlog_decision_drops_the_parsed_events_unless_the_cache_holds_them():
    cache = ParsedCache(events=10)
    live, backlog = history(1), history(1)
    cache.decided(live, live=True)
    cache.decided(live, live=False)  # a pass decided it: still cached
    cache.decided(backlog, live=False)

    assert live._parsed is not None and backlog._parsed is None


def test_clearing_drops_every_parsed_history():
    cache = ParsedCache(events=10)
    one = history(2)
    cache.keep(one)
    cache.clear()
    assert one._parsed is None and one not in cache and cache.events == 0


def test_a_dropped_history_leaves_the_cache_and_its_count():
    cache = ParsedCache(events=10)
    one = history(3)
    cache.keep(one)
    cache.drop(one)
    assert one not in cache and one._parsed is None and cache.events == 0
