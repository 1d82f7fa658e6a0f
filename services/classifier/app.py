"""The classifier worker's process: the consuming loop and its HTTP endpoints.

`/healthz` (alive), `/readyz` (partitions assigned, state restored, not stalled) and `/metrics`
(Prometheus). SIGTERM (uvicorn's) stops taking batches, commits the one in hand, leaves the
group so that its partitions move at once, and closes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.classifier.policy import Policy
from services.classifier.stream import Classifier
from shared.logging import get_logger
from shared.settings import Settings
from shared.stack import Endpoints

log = get_logger("painpath.classifier")

STOP_TIMEOUT = 30.0


def create_app(settings: Settings, endpoints: Endpoints, policy: Policy) -> FastAPI:
    classifier = Classifier(settings, endpoints, policy)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await classifier.start()
        task = asyncio.create_task(classifier.run(), name="classifier")
        watcher = asyncio.create_task(classifier.metrics.loop.watch(), name="loop-stalls")

        def stopped(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.error("classifier_failed", exc_info=task.exception())
                # A worker that cannot consume must not look alive: the process stops, and
                # `painpath classifier` exits 1 for its supervisor to restart it.
                app.state.failed = True
                server = getattr(app.state, "server", None)
                if server is not None:
                    server.should_exit = True
                else:
                    os.kill(os.getpid(), signal.SIGTERM)

        task.add_done_callback(stopped)
        log.info("classifier_started", policy=policy.id, group=classifier.group)
        try:
            yield
        finally:
            watcher.cancel()
            classifier.request_stop()
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT)
            except Exception:  # the timeout, or the loop failed: cancel what is left
                task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await task
            await classifier.close()
            log.info("classifier_stopped")

    app = FastAPI(title="Painpath classifier", version="1", lifespan=lifespan)
    app.state.classifier = classifier
    app.state.failed = False

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        readiness = classifier.readiness()
        response.status_code = 200 if readiness["ready"] else 503
        return readiness

    @app.get("/metrics")
    async def metrics() -> Response:
        for partition, waiting in classifier.lag().items():
            classifier.metrics.lag.labels(str(partition)).set(waiting)
        body = generate_latest(classifier.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app
