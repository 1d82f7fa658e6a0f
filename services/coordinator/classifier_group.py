"""The classifier group's readiness as a whole, exported by the coordinator.

The coordinator asks the broker about the classifier's consumer group (`shared.consumer_group`)
every `INTERVAL` seconds and exports it as metrics; `GET /classifier-group` answers a fresh
observation as JSON (always 200 when the broker answered: KEDA's metrics-api scaler reads
`lag` from it) and `GET /classifier-group/readyz` 200 or 503 (ready: every partition owned by
a member that makes progress). It says nothing of the coordinator's own readiness, and no
failure here stops the coordinator: an observation that fails is retried with backoff and
reported as not ready.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.consumer_group import GroupStatus, GroupWatch
from shared.logging import get_logger
from shared.settings import Settings
from shared.supervision import Loops

log = get_logger("painpath.coordinator.classifier_group")

INTERVAL = 5.0
FRESH_SECONDS = 0.5  # a request within this long of the last observation gets that one
OBSERVE_TIMEOUT = 10.0


class ClassifierGroupMonitor:
    def __init__(self, settings: Settings, bootstrap_servers: str, registry: CollectorRegistry):
        self._watch = GroupWatch(settings, bootstrap_servers)
        self._lock = asyncio.Lock()
        self._last: GroupStatus | None = None
        self._last_at = 0.0
        self._started = False
        self._task: asyncio.Task | None = None
        self.lag = Gauge(
            "painpath_classifier_group_lag",
            "Records of pain.events.v1 the classifier group has not committed (all partitions)",
            registry=registry,
        )
        self.unowned = Gauge(
            "painpath_classifier_group_unowned_partitions",
            "Partitions of pain.events.v1 no classifier consumes (group rebalancing or empty)",
            registry=registry,
        )
        self.stalled = Gauge(
            "painpath_classifier_group_stalled_partitions",
            "Partitions whose records wait with no offset committed for"
            " CLASSIFIER_GROUP_STALL_SECONDS",
            registry=registry,
        )
        self.members = Gauge(
            "painpath_classifier_group_members",
            "Members of the classifier group",
            registry=registry,
        )
        self.ready = Gauge(
            "painpath_classifier_group_ready",
            "1 when every partition of pain.events.v1 has a classifier making progress",
            registry=registry,
        )
        self.failures = Counter(
            "painpath_classifier_group_observe_failures",
            "Observations of the classifier group the broker did not answer",
            registry=registry,
        )

    async def start(self, loops: Loops | None = None) -> None:
        """Observe the group every few seconds until `stop`; with the process's `loops`, as one
        of them (`shared.supervision`: never a loop dead in a live process)."""
        if loops is None:
            self._task = asyncio.create_task(self._run(), name="classifier-group")
        else:
            self._task = loops.start("classifier-group", self._run, restart=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        with suppress(Exception):
            await self._watch.close()

    async def status(self) -> GroupStatus:
        async with self._lock:
            if self._last is not None and time.monotonic() - self._last_at < FRESH_SECONDS:
                return self._last
            if not self._started:
                await self._watch.start()
                self._started = True
            try:
                async with asyncio.timeout(OBSERVE_TIMEOUT):
                    status = await self._watch.status()
            except BaseException:
                self.ready.set(0)
                raise
            self._last, self._last_at = status, time.monotonic()
            self.lag.set(status.lag)
            self.unowned.set(len(status.unowned))
            self.stalled.set(len(status.stalled))
            self.members.set(status.members)
            self.ready.set(1 if status.ready else 0)
            return status

    async def _run(self) -> None:
        delay = INTERVAL
        while True:
            try:
                await self.status()
                delay = INTERVAL
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker did not answer: say not ready, try again later
                self.failures.inc()
                log.warning("classifier_group_observe_failed", retry_in_s=delay, exc_info=True)
                await self._reset()
                delay = min(delay * 2, 60.0)
            await asyncio.sleep(delay)

    async def _reset(self) -> None:
        async with self._lock:
            with suppress(Exception):
                await self._watch.close()
            self._started = False
            self._last = None

    def router(self) -> APIRouter:
        router = APIRouter()

        @router.get(
            "/classifier-group",
            summary="The classifier group: lag, members, unowned and stalled partitions",
        )
        async def classifier_group() -> JSONResponse:
            try:
                status = await self.status()
            except Exception as exc:  # what failed is the answer
                return JSONResponse(
                    {"ready": False, "error": f"the broker did not answer: {type(exc).__name__}"},
                    status_code=503,
                )
            return JSONResponse(status.as_dict())

        @router.get(
            "/classifier-group/readyz",
            summary="Readiness of the classifier group as a whole (200 or 503)",
        )
        async def classifier_group_ready() -> JSONResponse:
            response = await classifier_group()
            if response.status_code != 200:
                return response
            status = self._last
            return JSONResponse(
                {"ready": status.ready, "reasons": status.reasons},
                status_code=200 if status.ready else 503,
            )

        return router
