"""`painpath publish`: a client that batches a JSON-lines file of events through the gateway.

Batches are retried on 503 and on connection errors with exponential backoff: the gateway's
idempotency by (source, id) makes a retry safe (what was taken is answered `duplicate`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

MAX_REASONS = 10
RETRIES = 6


class PublishError(RuntimeError):
    """The file could not be sent (authentication, or the gateway stayed unavailable)."""


@dataclass
class Summary:
    accepted: int = 0
    duplicate: int = 0
    conflict: int = 0  # the same (source, id) accepted before with other content (409)
    rejected: int = 0  # breaks the contract (422), not JSON, or not allowed for its source (403)
    _reasons: list[tuple[int, str]] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        self._note(line, reason)

    def conflicts(self, line: int, reason: str) -> None:
        self.conflict += 1
        self._note(line, reason)

    def _note(self, line: int, reason: str) -> None:
        self._reasons = sorted([*self._reasons, (line, reason)])[:MAX_REASONS]

    def counts(self) -> str:
        return (
            f"accepted {self.accepted}  duplicate {self.duplicate}  conflict {self.conflict}"
            f"  rejected {self.rejected}"
        )

    @property
    def first_reasons(self) -> list[str]:
        """The reasons of the first rejected or conflicting lines, by line number."""
        return [f"line {line}: {reason}" for line, reason in self._reasons]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield number, line


def _post(client: httpx.Client, url: str, events: list[object], api_key: str) -> dict:
    delay = 0.5
    for attempt in range(RETRIES + 1):
        try:
            response = client.post(
                url,
                content=json.dumps(events),
                headers={"X-API-Key": api_key, "Content-Type": "application/json"},
            )
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code < 500:
            if response.status_code == 401:
                raise PublishError("the gateway refused the API key (401)")
            body = response.json()
            if "results" not in body:
                raise PublishError(
                    f"the gateway answered {response.status_code}: {body.get('detail')}"
                )
            return body
        if attempt < RETRIES:
            time.sleep(delay)
            delay *= 2
    raise PublishError(f"the gateway at {url} stayed unavailable after {RETRIES} retries")


def publish_file(path: Path, gateway_url: str, api_key: str, batch_size: int = 500) -> Summary:
    summary = Summary()
    url = gateway_url.rstrip("/") + "/v1/events"
    total = sum(1 for _ in _lines(path))
    columns = (TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with httpx.Client(timeout=60) as client, Progress(*columns, transient=False) as progress:
        task = progress.add_task("events", total=total)
        batch: list[tuple[int, object]] = []

        def flush() -> None:
            if not batch:
                return
            body = _post(client, url, [event for _, event in batch], api_key)
            for result in body["results"]:
                line = batch[result["index"]][0]
                if result["status"] == "accepted":
                    summary.accepted += 1
                elif result["status"] == "duplicate":
                    summary.duplicate += 1
                else:
                    reasons = "; ".join(f"{e['field']}: {e['reason']}" for e in result["errors"])
                    if result["status"] == "conflict":
                        summary.conflicts(line, f"conflict: {reasons}")
                    else:
                        summary.reject(line, f"{result['status']}: {reasons}")
            progress.advance(task, len(batch))
            batch.clear()

        for number, line in _lines(path):
            try:
                batch.append((number, json.loads(line)))
            except ValueError:
                summary.reject(number, "not valid JSON")
                progress.advance(task)
                continue
            if len(batch) >= batch_size:
                flush()
        flush()
    return summary
