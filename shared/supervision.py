"""The long-running loops of a service process, supervised alike.

The rule for every loop of every service (the classifier's consuming loop, the coordinator's two
consumers, its outbox relay and LISTEN connection, the gateway's retention sweep): it either
recovers by itself or its death stops the process with a non-zero exit status, and `/healthz`
fails from the moment a loop is dead. No loop dies silently.

- `restart=True`, for a loop that may simply be run again (it keeps no position of its own): an
  exception is logged (its type only) and the loop is run again after a backoff (0.5 s doubling
  to 30 s, back to 0.5 s once it ran a minute without failing).
- `restart=False`, for a consuming loop: an exception it does not handle itself (a database
  outage is handled inside, with backoff) may leave its position past records it did not
  apply, so the loop is dead: logged, `/healthz` 503, and the process is asked to stop (its exit
  status 1), for its supervisor to start it again from the committed offsets.

A loop that returns before `stop` was asked for is dead too; one cancelled is not (only a stop
cancels a loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from fastapi import FastAPI, Response

from shared.logging import get_logger

log = get_logger("painpath.supervision")

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
HEALTHY_SECONDS = 60.0  # a loop that ran this long without failing starts its backoff again


class Loops:
    """The supervised loops of one process; `on_death` is called once a loop is dead."""

    def __init__(
        self,
        on_death: Callable[[], None],
        initial_backoff: float = INITIAL_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
    ):
        self._on_death = on_death
        self._initial = initial_backoff
        self._max = max_backoff
        self.dead: list[str] = []
        self.restarts: dict[str, int] = {}
        self.stopping = False

    @classmethod
    def of_app(cls, app: FastAPI) -> Loops:
        """The loops of a service's app: their death stops it (`stop_the_process`), and its
        `GET /healthz` answers with `healthz`."""
        loops = cls(stop_the_process(app))
        app.state.failed = False
        app.state.loops = loops
        app.get("/healthz", summary="Liveness: the process answers and none of its loops died")(
            loops.healthz
        )
        return loops

    async def healthz(self, response: Response) -> dict[str, Any]:
        """200 `{"status": "ok"}`, or 503 with the dead loops' names (no dependency checks)."""
        response.status_code = 200 if self.alive else 503
        return self.health()

    def start(
        self, name: str, run: Callable[[], Awaitable[None]], *, restart: bool = False
    ) -> asyncio.Task:
        """Run `run()` as the task `name`, supervised (see the module)."""
        task = asyncio.create_task(self._supervised(name, run, restart), name=name)
        task.add_done_callback(partial(self._ended, name))
        self.restarts.setdefault(name, 0)
        return task

    def stop(self) -> None:
        """From now on a loop that returns has finished, not died."""
        self.stopping = True

    @property
    def alive(self) -> bool:
        return not self.dead

    def health(self) -> dict[str, Any]:
        """`/healthz`'s answer: ok, or failing with the dead loops' names."""
        if self.alive:
            return {"status": "ok"}
        return {"status": "failing", "dead_loops": list(self.dead)}

    async def _supervised(self, name: str, run: Callable[[], Awaitable[None]], restart: bool):
        loop = asyncio.get_running_loop()
        delay = self._initial
        while True:
            started = loop.time()
            try:
                await run()
                return
            except Exception as error:
                if not restart or self.stopping:
                    raise
                if loop.time() - started >= HEALTHY_SECONDS:
                    delay = self._initial
                self.restarts[name] += 1
                log.warning(
                    "loop_failed_restarting",
                    loop=name,
                    error=type(error).__name__,
                    retry_in_seconds=delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max)

    def _ended(self, name: str, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None and self.stopping:
            return
        self.dead.append(name)
        log.error(
            "loop_died",
            loop=name,
            error=type(error).__name__ if error is not None else "returned before a stop",
            exc_info=error,
        )
        self._on_death()


def stop_the_process(app: FastAPI) -> Callable[[], None]:
    """An `on_death` for a FastAPI app served by `painpath <service>`: the app is marked failed
    (the command then exits 1) and its server asked to exit (a graceful stop: the other loops
    finish what they hold). Without a server (an app in a test) it is only marked failed."""

    def stop() -> None:
        app.state.failed = True
        server = getattr(app.state, "server", None)
        if server is not None:
            server.should_exit = True

    return stop
