"""The classifier worker's process: the consuming loop and its HTTP endpoints.

`/healthz` (alive: 503 once the consuming loop died, `shared.supervision`), `/readyz`
(partitions assigned, state restored, not stalled) and `/metrics` (Prometheus). SIGTERM
(uvicorn's) stops taking batches, commits the one in hand, leaves the group so that its
partitions move at once, and closes.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.classifier.policy import Policy
from services.classifier.stream import Classifier
from shared.logging import get_logger
from shared.settings import Settings
from shared.stack import Endpoints
from shared.supervision import Loops

log = get_logger("painpath.classifier")

STOP_TIMEOUT = 30.0


def create_app(settings: Settings, endpoints: Endpoints, policy: Policy) -> FastAPI:
    classifier = Classifier(settings, endpoints, policy)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await classifier.start()
        # A worker that cannot consume must not look alive: its loop's death stops the process,
        # and `painpath classifier` exits 1 for its supervisor to restart it.
        task = loops.start("classifier", classifier.run)
        watcher = loops.start("loop-stalls", classifier.metrics.loop.watch, restart=True)
        log.info("classifier_started", policy=policy.id, group=classifier.group)
        try:
            yield
        finally:
            watcher.cancel()
            loops.stop()
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
    loops = Loops.of_app(app)

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
