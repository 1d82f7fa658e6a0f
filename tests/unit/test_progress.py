"""The stuck-consumer watchdog."""

from shared.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_consumer_with_lag_and_no_progress_for_too_long_is_stalled():
    clock = Clock()
    progress = Progress(stall_after=60, clock=clock)
    progress.processed(partition=0, offset=9)

    clock.now = 59
    assert not progress.stalled(total_lag=5)
    clock.now = 61
    assert progress.stalled(total_lag=5)


def test_an_idle_consumer_without_lag_is_not_stalled():
    clock = Clock()
    progress = Progress(stall_after=60, clock=clock)
    clock.now = 3600

    assert not progress.stalled(total_lag=0)


def test_processing_resets_the_watchdog():
    clock = Clock()
    progress = Progress(stall_after=60, clock=clock)
    clock.now = 100
    progress.processed(partition=1, offset=0)

    assert not progress.stalled(total_lag=10)


def test_lag_counts_fetched_but_unprocessed_records():
    progress = Progress(stall_after=60)
    progress.processed(partition=2, offset=99)  # next to process: 100

    assert progress.lag(partition=2, highwater=150, position=140) == 50
    assert progress.lag(partition=3, highwater=150, position=140) == 10  # unknown: its position
    progress.forget()
    assert progress.lag(partition=2, highwater=150, position=140) == 10
