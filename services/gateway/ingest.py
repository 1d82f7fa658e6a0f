"""Ingest: validate a batch of events, deduplicate by (source, id), publish what is new.

The rule that nothing accepted is lost and nothing is published twice for one acceptance:
the (source, id) claims are inserted and the new events published inside one database
transaction, committed only after the broker acknowledged every send (`acks=all`). A failed
publish rolls the claims back and the request answers 503, so the client's retry is safe; a
crash after the publish but before the commit can at worst publish an event a second time,
which consumers drop by its (source, id) — at-least-once, never lost.

Each claim also keeps the exact record published (key, value, headers) and its place in the
request, until the retention sweep forgets it: `services/gateway/replay.py` publishes what was
accepted again, in acceptance order, after a broker lost its log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from shared.contract import (
    MAX_EVENT_BYTES,
    ContractViolation,
    Violation,
    content,
    json_text,
    read_event,
)
from shared.contract.events import KEY_MAX_LENGTH
from shared.logging import SafeMessage
from shared.settings import ApiKey

MAX_BATCH = 1000
# One clinical event is small; the broker's default record limit is 1 MiB.


class ItemStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    CONFLICT = "conflict"
    FORBIDDEN = "forbidden"


ITEM_CODES = {
    ItemStatus.ACCEPTED: 202,
    ItemStatus.DUPLICATE: 200,
    ItemStatus.REJECTED: 422,
    ItemStatus.CONFLICT: 409,
    ItemStatus.FORBIDDEN: 403,
}


class ItemResult(BaseModel):
    index: int
    id: str | None = None
    status: ItemStatus
    code: int
    errors: list[Violation] = []


class PublishFailed(SafeMessage, RuntimeError):
    """The broker did not acknowledge every event of the batch: nothing of it was accepted."""


@dataclass
class _Candidate:
    index: int
    source: str
    event_id: str
    patient_id: str
    value: bytes
    content_hash: bytes

    @property
    def key(self) -> bytes:
        return self.patient_id.encode()


def record_headers(traceparent: str | None) -> list[tuple[str, bytes]]:
    """The headers of a published event (kept with its claim, for a replay)."""
    headers = [("content-type", b"application/cloudevents+json")]
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    return headers


@dataclass
class Outcome:
    results: list[ItemResult] = field(default_factory=list)

    def count(self, status: ItemStatus) -> int:
        return sum(result.status is status for result in self.results)


def _result(index: int, event_id: str | None, status: ItemStatus, *errors: Violation) -> ItemResult:
    return ItemResult(
        index=index, id=event_id, status=status, code=ITEM_CODES[status], errors=list(errors)
    )


def _read(item: Any, plain: bool = False) -> tuple[Any, Any] | ContractViolation:
    try:
        return read_event(item, plain=plain)
    except ContractViolation as violation:
        return violation


def _event_id(item: Any) -> str | None:
    """The item's id for the reply, only when it is plain text (it is not patient data)."""
    if isinstance(item, bytes):  # an event the body's decoding refused: read it alone
        try:
            item = json.loads(item)
        except (ValueError, RecursionError):
            return None
    value = item.get("id") if isinstance(item, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= KEY_MAX_LENGTH or "\x00" in value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


class Ingestor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        topic: str,
        publish_timeout: float = 15.0,
    ):
        self._pool = pool
        self._producer = producer
        self._topic = topic
        self._publish_timeout = publish_timeout

    async def ingest(
        self,
        items: list[Any],
        api_key: ApiKey,
        traceparent: str | None = None,
        *,
        plain: bool = False,
    ) -> Outcome:
        """`plain`: the items were decoded from a body `json_text.plain` found plain."""
        results: dict[int, ItemResult] = {}
        candidates: list[_Candidate] = []
        seen: dict[tuple[str, str], bytes] = {}
        if any(isinstance(item, bytes) for item in items):
            # Events the body's decoding refused as a whole, each read alone: that reading is
            # linear in their size but not at C speed, so it runs off the event loop.
            read = await asyncio.to_thread(lambda: [_read(item) for item in items])
        else:
            read = [_read(item, plain) for item in items]
        for index, (item, outcome) in enumerate(zip(items, read, strict=True)):
            if isinstance(outcome, ContractViolation):
                results[index] = _result(
                    index, _event_id(item), ItemStatus.REJECTED, *outcome.violations
                )
                continue
            event, item = outcome
            if not api_key.may_publish(event.source):
                results[index] = _result(
                    index,
                    event.id,
                    ItemStatus.FORBIDDEN,
                    Violation(
                        field="source", reason="this API key may not publish for this source"
                    ),
                )
                continue
            value = json_text.dumps(item).encode()
            if len(value) > MAX_EVENT_BYTES:
                too_large = Violation(
                    field="(event)", reason=f"larger than {MAX_EVENT_BYTES // 1024} KiB"
                )
                results[index] = _result(index, event.id, ItemStatus.REJECTED, too_large)
                continue
            content_hash = hashlib.sha256(content(item).encode()).digest()
            if event.key in seen:  # the same event twice in one batch
                status = (
                    ItemStatus.DUPLICATE if seen[event.key] == content_hash else ItemStatus.CONFLICT
                )
                results[index] = _result(index, event.id, status, *_conflict(status))
                continue
            seen[event.key] = content_hash
            candidates.append(
                _Candidate(
                    index=index,
                    source=event.source,
                    event_id=event.id,
                    patient_id=event.patient_id,
                    value=value,
                    content_hash=content_hash,
                )
            )
        if candidates:
            results.update(await self._claim_and_publish(candidates, traceparent))
        return Outcome([results[index] for index in sorted(results)])

    async def _claim_and_publish(
        self, candidates: list[_Candidate], traceparent: str | None
    ) -> dict[int, ItemResult]:
        results: dict[int, ItemResult] = {}
        headers = record_headers(traceparent)
        async with self._pool.acquire() as connection, connection.transaction():
            # Sorted so that concurrent batches take the key locks in one order (no deadlock).
            # The record is kept as published, with its place in the batch (its order).
            claimed = {
                (row["source"], row["event_id"])
                for row in await connection.fetch(
                    """INSERT INTO gateway_accepted_events
                           (source, event_id, content_hash, record_key, record_value,
                            batch_position, header_names, header_values)
                       SELECT c.*, $7::text[], $8::bytea[]
                       FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[],
                                   $5::bytea[], $6::int[]) AS c
                       ORDER BY 1, 2
                       ON CONFLICT DO NOTHING
                       RETURNING source, event_id""",
                    [c.source for c in candidates],
                    [c.event_id for c in candidates],
                    [c.content_hash for c in candidates],
                    [c.key for c in candidates],
                    [c.value for c in candidates],
                    [c.index for c in candidates],
                    [name for name, _ in headers],
                    [value for _, value in headers],
                )
            }
            known = [c for c in candidates if (c.source, c.event_id) not in claimed]
            if known:
                stored = {
                    (row["source"], row["event_id"]): row["content_hash"]
                    for row in await connection.fetch(
                        """SELECT source, event_id, content_hash FROM gateway_accepted_events
                           WHERE (source, event_id) IN
                                 (SELECT * FROM unnest($1::text[], $2::text[]))""",
                        [c.source for c in known],
                        [c.event_id for c in known],
                    )
                }
                for candidate in known:
                    same = (
                        stored.get((candidate.source, candidate.event_id)) == candidate.content_hash
                    )
                    status = ItemStatus.DUPLICATE if same else ItemStatus.CONFLICT
                    results[candidate.index] = _result(
                        candidate.index, candidate.event_id, status, *_conflict(status)
                    )
            fresh = [c for c in candidates if (c.source, c.event_id) in claimed]
            await self._publish(fresh, headers)
            for candidate in fresh:
                results[candidate.index] = _result(
                    candidate.index, candidate.event_id, ItemStatus.ACCEPTED
                )
        return results

    async def _publish(
        self, candidates: list[_Candidate], headers: list[tuple[str, bytes]]
    ) -> None:
        try:
            # send() in batch order: one patient's events keep their order within a partition.
            sends = [
                await self._producer.send(
                    self._topic,
                    value=candidate.value,
                    key=candidate.key,
                    headers=headers,
                )
                for candidate in candidates
            ]
            await asyncio.wait_for(asyncio.gather(*sends), self._publish_timeout)
        except Exception as exc:
            raise PublishFailed("the event broker did not acknowledge the batch") from exc


def _conflict(status: ItemStatus) -> tuple[Violation, ...]:
    if status is ItemStatus.CONFLICT:
        return (
            Violation(
                field="id",
                reason="an event with this source and id was already accepted with other content",
            ),
        )
    return ()
