"""structlog, configured once: JSON lines on stderr, with event ids, trace ids and no patient data.

The privacy processor is the guarantee that no patient identifier or clinical free text reaches a
log line, whatever a caller passes:
- a patient id (any key in `PATIENT_KEYS`) is replaced by a keyed hash (HMAC-SHA256, key from
  `LOG_PSEUDONYM_KEY`), so the same patient can be followed across lines without being named;
- clinical free text and whole payloads (`REDACTED_KEYS`) are replaced by `[redacted]`;
- exceptions are rendered as their type and stack frames only: their messages can carry values
  (a validation error repeats its input), unless the exception says it is safe (`SafeMessage`);
- a library's record (standard `logging`) is formatted with its arguments only where they cannot
  be data (`TRUSTED_ARG_LOGGERS`); elsewhere only its numbers are filled in.
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
# Libraries whose INFO lines are chatter for an operator (pgserver narrates every pg_ctl call;
# httpx and httpcore name every URL requested, and a URL can hold a patient id).
QUIET_LOGGERS = ("pgserver", "aiokafka", "asyncio", "httpx", "httpcore")
# Libraries whose log arguments are addresses, names of topics and groups, counts and states,
# never an event's content: their records are formatted with every argument. Other libraries'
# records get their numbers, and `[redacted]` for every other argument.
TRUSTED_ARG_LOGGERS = ("uvicorn", "aiokafka")


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
    # through the same privacy filter, formatted by `_library_message`.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_library_message, *shared_processors],
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


def _library_message(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A library record's message with its arguments filled in as far as they are safe: all of
    them for `TRUSTED_ARG_LOGGERS`, else numbers only (any other argument reads `[redacted]`);
    an exception argument is its type (and its message if `SafeMessage`)."""
    record: logging.LogRecord | None = event_dict.get("_record")
    args = event_dict.pop("positional_args", None)
    if record is None:
        return event_dict
    if not args:
        event_dict["event"] = str(record.msg)
        return event_dict
    trusted = any(
        record.name == name or record.name.startswith(name + ".") for name in TRUSTED_ARG_LOGGERS
    )

    def safe(arg: Any) -> Any:
        if isinstance(arg, BaseException):
            return _exception_summary(arg)
        if trusted or (isinstance(arg, int | float) and not isinstance(arg, bool)):
            return arg
        return REDACTED

    if isinstance(args, Mapping):
        values: Any = {name: safe(value) for name, value in args.items()}
    else:
        values = tuple(safe(arg) for arg in args)
    try:
        event_dict["event"] = str(record.msg) % values
    except (TypeError, ValueError, KeyError):  # a placeholder wanting what was redacted
        event_dict["event"] = str(record.msg)
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
