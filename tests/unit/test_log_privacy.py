"""The privacy filter: no patient id or clinical free text reaches a log line."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from shared.contract import ContractViolation, parse_event
from shared.logging import PrivacyFilter, SafeMessage, configure_logging, pseudonymise
from tests.conftest import RUN_LOG

PATIENT = "pt-PRIVACY-7731"
FREE_TEXT = "burning pain after the fall at home"


@pytest.fixture
def captured():
    """Log lines written through the real configuration, then the run log is restored."""
    stream = io.StringIO()
    configure_logging("DEBUG", "unit-key", stream=stream)
    yield stream
    configure_logging("DEBUG", "test-pseudonym-key", stream=RUN_LOG.open("a", buffering=1))


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_patient_ids_become_keyed_pseudonyms(captured):
    structlog.get_logger("t").info("scored", patient_id=PATIENT, trace_id="abc")

    [line] = lines(captured)
    assert line["patient_id"] == pseudonymise(PATIENT, b"unit-key")
    assert line["patient_id"] != pseudonymise(PATIENT, b"another-key")
    assert line["trace_id"] == "abc"
    assert PATIENT not in captured.getvalue()


def test_free_text_and_payloads_are_redacted_even_when_nested(captured):
    structlog.get_logger("t").warning(
        "odd_event",
        findings={"note": FREE_TEXT},
        effect=FREE_TEXT,
        context={"patient": PATIENT, "data": {"patient_id": PATIENT}},
        items=[{"patient_id": PATIENT, "drug": "gabapentin"}],
    )

    text = captured.getvalue()
    assert PATIENT not in text and FREE_TEXT not in text and "gabapentin" not in text
    [line] = lines(captured)
    assert line["findings"] == "[redacted]"
    assert line["context"]["patient"].startswith("pseu:")


def test_exception_messages_that_repeat_input_are_dropped(captured):
    try:
        parse_event({"specversion": "1.0", "data": {"patient_id": PATIENT + " bad"}})
    except ContractViolation:
        structlog.get_logger("t").exception("rejected")
    try:
        raise KeyError(PATIENT)
    except KeyError:
        structlog.get_logger("t").error("lookup_failed", exc_info=True)

    text = captured.getvalue()
    assert PATIENT not in text
    assert "ContractViolation" in text and "KeyError" in text
    assert "test_log_privacy.py" in text  # the stack frames stay: they carry no data


def test_safe_exception_messages_are_kept(captured):
    class BrokerDown(SafeMessage, RuntimeError):
        pass

    try:
        raise BrokerDown("broker 127.0.0.1:9092 did not answer")
    except BrokerDown:
        structlog.get_logger("t").exception("failed")

    assert "broker 127.0.0.1:9092 did not answer" in captured.getvalue()


def test_standard_library_records_keep_their_numbers_and_redact_other_arguments(captured):
    logging.getLogger("some.library").warning("could not deliver record %d for %s", 7, PATIENT)

    [line] = lines(captured)
    assert line["event"] == "could not deliver record 7 for [redacted]"
    assert PATIENT not in captured.getvalue()


def test_trusted_library_records_are_formatted_with_their_arguments(captured):
    """No unfilled placeholder ("Uvicorn running on %s://%s:%d") reaches a log line."""
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s://%s:%d", "http", "127.0.0.1", 8)
    logging.getLogger("aiokafka.consumer").warning("lost %(tp)s", {"tp": "pain.events.v1-3"})
    logging.getLogger("aiokafka").error("failed: %s", ValueError(PATIENT))

    assert [line["event"] for line in lines(captured)] == [
        "Uvicorn running on http://127.0.0.1:8",
        "lost pain.events.v1-3",
        "failed: ValueError",
    ]
    assert PATIENT not in captured.getvalue()


def test_named_arguments_of_other_libraries_keep_only_their_numbers(captured):
    logging.getLogger("some.library").warning("%(n)d for %(who)s", {"n": 2, "who": PATIENT})

    [line] = lines(captured)
    assert line["event"] == "2 for [redacted]"


def test_httpx_request_lines_stay_off_the_console(captured):
    """httpx's INFO line is the URL requested, which can hold a patient id."""
    logging.getLogger("httpx").info("HTTP Request: %s %s", "GET", f"http://x/v1/patients/{PATIENT}")

    assert lines(captured) == []


def test_the_filter_leaves_operational_fields_alone():
    cleaned = PrivacyFilter(b"k")(
        None, "info", {"event": "x", "accepted": 3, "route": "/v1/events"}
    )

    assert cleaned == {"event": "x", "accepted": 3, "route": "/v1/events"}
