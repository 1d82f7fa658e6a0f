"""W3C trace context (`traceparent`) carried from the gateway's request to the task change.

Every service continues the trace it received (same trace id, a new span id), puts it on what it
publishes (Kafka header `traceparent`), and binds the trace id to its log lines, so that one
trace id follows an event through every service and every log line.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

import structlog

TRACEPARENT = "traceparent"
_FORMAT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_current: ContextVar[str | None] = ContextVar("traceparent", default=None)


def trace_id_of(traceparent: str | bytes | None) -> str | None:
    """The trace id of a valid `traceparent`, else None."""
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode("ascii", "replace")
    match = _FORMAT.match(traceparent or "")
    if match is None or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return match.group(1)


def continue_trace(traceparent: str | bytes | None) -> str:
    """A `traceparent` for our own span: the caller's trace continued, or a new trace."""
    trace_id = trace_id_of(traceparent) or secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


def from_headers(headers) -> str | None:
    """The `traceparent` among Kafka record headers (a list of pairs, or a mapping)."""
    pairs = headers.items() if isinstance(headers, dict) else headers or ()
    for name, value in pairs:
        if name == TRACEPARENT:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return None


def bind(traceparent: str) -> None:
    """Log lines from here on (in this task) carry the trace id, and `current()` returns it."""
    _current.set(traceparent)
    structlog.contextvars.bind_contextvars(trace_id=trace_id_of(traceparent))


def current() -> str | None:
    """The `traceparent` bound in this task, to put on what it publishes."""
    return _current.get()
