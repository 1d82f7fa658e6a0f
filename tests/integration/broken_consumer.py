"""`painpath coordinator` whose timeline (event) consumer fails with an error it does not
handle, a few seconds after start: the supervised loops' test double.

    python -m tests.integration.broken_consumer coordinator --port N
"""

from __future__ import annotations

FAILS_AFTER_SECONDS = 3.0


def _break() -> None:
    import asyncio

    from services.coordinator.consumer import BatchConsumer

    real = BatchConsumer.run

    async def run(self) -> None:
        if self.name != "events":
            return await real(self)
        await asyncio.sleep(FAILS_AFTER_SECONDS)
        raise RuntimeError("a bug in the timeline consumer")

    BatchConsumer.run = run


if __name__ == "__main__":
    from painpath.cli import main

    _break()
    main()
