"""The loop-stall watch: a loop held by blocking work shows up as a late wake-up."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from shared.loop_stall import LoopStalls, TimeSlice


async def test_a_loop_held_for_a_while_is_recorded_as_a_stall():
    stalls = LoopStalls(CollectorRegistry(), "test")
    watcher = asyncio.create_task(stalls.watch(interval=0.01))
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # blocking work holding the loop
    await asyncio.sleep(0.05)
    watcher.cancel()

    assert 0.25 <= stalls.longest < 2
    assert stalls.worst._value.get() == stalls.longest


def test_only_the_longest_stall_is_the_maximum():
    stalls = LoopStalls(CollectorRegistry(), "test")
    for late in (0.2, 0.05, -0.01):
        stalls.observe(late)
    assert stalls.longest == 0.2


async def test_long_work_in_time_slices_never_holds_the_loop_much_longer_than_a_slice():
    stalls = LoopStalls(CollectorRegistry(), "test")
    watcher = asyncio.create_task(stalls.watch(interval=0.005))
    await asyncio.sleep(0.02)
    slices = TimeSlice(seconds=0.02)
    started = time.monotonic()
    while time.monotonic() - started < 0.5:  # half a second of work, an item a millisecond
        time.sleep(0.001)
        await slices.pause()
    watcher.cancel()

    assert stalls.longest < 0.15  # a slice and an item, with room for a busy machine


async def test_a_pause_before_the_slice_is_spent_does_not_yield():
    slices = TimeSlice(seconds=60)
    other = asyncio.create_task(asyncio.sleep(0))
    await slices.pause()
    assert not other.done()
    await other
