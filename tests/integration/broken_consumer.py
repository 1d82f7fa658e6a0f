"""`painpath coordinator` one of whose consumers (the timeline's, `events`, unless
`BROKEN_CONSUMER` names another) fails with an error it does not handle, a few seconds after
start: the supervised loops' test double.

    BROKEN_CONSUMER=events python -m tests.integration.broken_consumer coordinator --port N
"""

from __future__ import annotations

FAILS_AFTER_SECONDS = 3.0


def _break() -> None:
    import asyncio
    import os

    from services.coordinator.consumer import BatchConsumer

    real = BatchConsumer.run
    broken = os.environ.get("BROKEN_CONSUMER", "events")

    async def run(self) -> None:
        if self.name != broken:
            return await real(self)
        await asyncio.sleep(FAILS_AFTER_SECONDS)
        raise RuntimeError(f"a bug in the {broken} consumer")

    BatchConsumer.run = run


if __name__ == "__main__":
    from painpath.cli import main

    _break()
    main()
