"""structlog, configured once: JSON lines on stderr, with event ids, trace ids and no patient data.

The privacy processor is the guarantee that no patient identifier or clinical free text reaches a
log line, whatever a caller passes:
- a patient id (any key in `PATIENT_KEYS`) is replaced by a keyed hash (HMAC-SHA256, key from
  `LOG_PSEUDONYM_KEY`), so the same patient can be followed across lines without being named;
- clinical free text and whole payloads (`REDACTED_KEYS`) are replaced by `[redacted]`;
- exceptions are rendered as their type and stack frames only: their messages can carry values
  (a validation error repeats its input), unless the exception says it is safe (`SafeMessage`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import structlog

PATIENT_KEYS = frozenset({"patient_id", "patient", "subject"})
REDACTED_KEYS = frozenset(
    {
        "data",
        "event",
        "payload",
        "body",
        "findings",
        "effect",
        "pain_sites",
        "icd10_codes",
        "drug",
        "text",
        "note",
        "notes",
        "value",
        "message_value",
        "authorization",
        "api_key",
        "password",
        "token",
    }
)
REDACTED = "[redacted]"
# Libraries whose INFO lines are chatter for an operator (pgserver narrates every pg_ctl call).
QUIET_LOGGERS = ("pgserver", "aiokafka", "asyncio")


class SafeMessage:
    """Mixin for exceptions whose message is known to carry no patient data."""


def pseudonymise(value: str, key: bytes) -> str:
    digest = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
    return f"pseu:{digest[:16]}"


class PrivacyFilter:
    """structlog processor: see the module docstring."""

    def __init__(self, key: bytes):
        self._key = key

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        exc_info = event_dict.pop("exc_info", None)
        cleaned = {name: self._clean(name, value) for name, value in event_dict.items()}
        if exc_info:
            cleaned["exception"] = _render_exception(exc_info)
        return cleaned

    def _clean(self, name: str, value: Any) -> Any:
        lowered = name.lower()
        if lowered == "event":  # structlog's own message field: the log line's name
            return value if isinstance(value, str) else REDACTED
        if lowered in PATIENT_KEYS and value is not None:
            return pseudonymise(str(value), self._key)
        if lowered in REDACTED_KEYS:
            return REDACTED
        if isinstance(value, Mapping):
            return {k: self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping):
            return [self._clean(name, item) for item in value]
        if isinstance(value, BaseException):
            return _exception_summary(value)
        return value


def _exception_summary(exc: BaseException) -> str:
    if isinstance(exc, SafeMessage):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def _render_exception(exc_info: Any) -> str:
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    _, exc, tb = exc_info
    if exc is None:
        return ""
    frames = "".join(
        f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}\n'
        for frame in traceback.extract_tb(tb)
    )
    return f"Traceback (most recent call last):\n{frames}{_exception_summary(exc)}"


def configure_logging(
    level: str = "INFO", pseudonym_key: str | None = None, stream: Any = None
) -> None:
    """Set up structlog and the standard library's logging to write privacy-filtered JSON lines.

    Without a pseudonym key a random one is used: pseudonyms then hold within one process only.
    """
    key = (pseudonym_key or secrets.token_hex(32)).encode()
    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        PrivacyFilter(key),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    # Libraries (aiokafka, uvicorn) log through the standard library: their lines go
    # through the same privacy filter. Their messages are formatted before we see them, so
    # their arguments are dropped and only the message template is kept.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_template_only, *shared_processors],
        pass_foreign_args=True,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _template_only(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    record: logging.LogRecord | None = event_dict.get("_record")
    if event_dict.pop("positional_args", None) and record is not None:
        event_dict["event"] = str(record.msg)
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
