"""Every long-running loop either recovers by itself or its death stops the process and fails
/healthz (`shared.supervision`)."""

from __future__ import annotations

import asyncio

import httpx

from shared.supervision import Loops


class Died:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def settle(task: asyncio.Task) -> None:
    await asyncio.wait([task], timeout=5)
    await asyncio.sleep(0)  # the done callbacks


async def test_a_loop_that_raises_is_dead_and_stops_the_process():
    died = Died()
    loops = Loops(died)

    async def consume():
        raise RuntimeError("an unexpected failure")

    await settle(loops.start("events", consume))

    assert died.calls == 1 and not loops.alive
    assert loops.health() == {"status": "failing", "dead_loops": ["events"]}


async def test_a_restartable_loop_is_run_again_with_backoff_and_stays_alive():
    died = Died()
    loops = Loops(died, initial_backoff=0.01, max_backoff=0.04)
    runs = []

    async def sweep():
        runs.append(asyncio.get_running_loop().time())
        if len(runs) < 4:
            raise OSError("database unavailable")
        await asyncio.Event().wait()  # runs on, as a loop does

    task = loops.start("sweep", sweep, restart=True)
    async with asyncio.timeout(5):
        while len(runs) < 4:
            await asyncio.sleep(0.01)
    task.cancel()
    await settle(task)

    assert len(runs) == 4 and loops.restarts["sweep"] == 3
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    assert gaps[0] >= 0.01 and gaps[2] >= 0.04  # doubling, up to its maximum
    assert died.calls == 0 and loops.alive and loops.health() == {"status": "ok"}


async def test_a_loop_that_returns_before_a_stop_is_dead_and_after_a_stop_has_finished():
    died = Died()
    loops = Loops(died)

    async def returns():
        return None

    await settle(loops.start("early", returns))
    assert loops.dead == ["early"] and died.calls == 1

    loops.stop()
    await settle(loops.start("late", returns))
    assert loops.dead == ["early"] and died.calls == 1


async def test_a_loop_cancelled_by_a_stop_is_not_dead():
    died = Died()
    loops = Loops(died)
    task = loops.start("relay", asyncio.Event().wait)
    await asyncio.sleep(0)
    task.cancel()
    await settle(task)

    assert loops.alive and died.calls == 0


def service_apps() -> dict[str, object]:
    """Each service's app, not started (no broker, no database): only its /healthz is asked."""
    from services.classifier.app import create_app as classifier_app
    from services.classifier.policy import load_policy
    from services.coordinator.app import create_app as coordinator_app
    from services.coordinator.scheduling import load_roster
    from services.coordinator.templates import load_templates
    from services.gateway.app import create_app as gateway_app
    from shared.settings import Settings
    from tests.unit.test_quarantine import brokerless

    settings, endpoints = Settings(_env_file=None), brokerless()
    return {
        "gateway": gateway_app(settings, endpoints),
        "classifier": classifier_app(settings, endpoints, load_policy()),
        "coordinator": coordinator_app(settings, endpoints, load_templates(), load_roster()),
    }


async def test_a_dead_loop_fails_healthz_and_marks_each_service_failed():
    async def broken():
        raise ValueError("a bug")

    for name, app in service_apps().items():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            assert (await client.get("/healthz")).status_code == 200, name
            await settle(app.state.loops.start("consuming", broken))
            answer = await client.get("/healthz")

        assert answer.status_code == 503, name
        assert answer.json() == {"status": "failing", "dead_loops": ["consuming"]}, name
        assert app.state.failed, name
