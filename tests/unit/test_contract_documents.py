"""The contract's JSON Schemas and AsyncAPI document: generated from the models, and up to date."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import dead_letter
from shared.contract import DETERMINATION_TYPE, EVENT_MODELS, ContractViolation, parse_event
from shared.contract.export import (
    ASYNCAPI_PATH,
    SCHEMAS_DIR,
    export,
    render_documents,
    schema_path,
)
from shared.topics import CATALOG, EVENTS, EVENTS_DLQ
from tests.contract_edges import EDGES
from tests.samples import CONTRACT_EXAMPLE, MISSING, valid_event

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def documents() -> dict[Path, str]:
    return render_documents()


@pytest.fixture(scope="module")
def asyncapi(documents: dict[Path, str]) -> dict[str, Any]:
    return yaml.safe_load(documents[ASYNCAPI_PATH])


def test_the_committed_documents_are_up_to_date() -> None:
    assert export(REPO_ROOT, check=True) == [], "run `make contract` and commit docs/contract"


def test_rendering_is_deterministic_text_ending_in_a_newline(documents: dict[Path, str]) -> None:
    assert render_documents() == documents
    assert all(text.endswith("\n") and not text.endswith("\n\n") for text in documents.values())


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_every_event_type_has_its_own_schema(documents: dict[Path, str], event_type: str) -> None:
    schema = json.loads(documents[schema_path(event_type)])

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://painpath.dev/schemas/{event_type}.json"
    assert schema["properties"]["type"]["const"] == event_type
    assert {"specversion", "id", "source", "type", "time", "data"} <= set(schema["required"])


def test_there_is_no_schema_but_the_event_types_and_the_determination(
    documents: dict[Path, str],
) -> None:
    schemas = {path for path in documents if path.parent == SCHEMAS_DIR}

    assert schemas == {schema_path(name) for name in [*EVENT_MODELS, DETERMINATION_TYPE]}


def test_check_reports_stale_missing_and_extra_files_without_writing(tmp_path: Path) -> None:
    assert len(export(tmp_path)) == len(render_documents())
    stale, missing = schema_path("pain.score.recorded.v1"), schema_path("pain.trial.started.v1")
    extra = SCHEMAS_DIR / "pain.removed.v1.json"
    (tmp_path / stale).write_text("{}\n")
    (tmp_path / missing).unlink()
    (tmp_path / extra).write_text("{}\n")

    assert export(tmp_path, check=True) == sorted([stale, missing, extra])
    assert (tmp_path / stale).read_text() == "{}\n"
    assert not (tmp_path / missing).exists()
    assert (tmp_path / extra).exists()


def test_export_brings_every_document_up_to_date(tmp_path: Path) -> None:
    export(tmp_path)
    (tmp_path / ASYNCAPI_PATH).write_text("asyncapi: 2.0.0\n")
    (tmp_path / SCHEMAS_DIR / "pain.removed.v1.json").write_text("{}\n")

    assert export(tmp_path) == sorted([ASYNCAPI_PATH, SCHEMAS_DIR / "pain.removed.v1.json"])
    assert export(tmp_path, check=True) == []
    assert not (tmp_path / SCHEMAS_DIR / "pain.removed.v1.json").exists()


# --- AsyncAPI --------------------------------------------------------------------------------


def test_asyncapi_lists_every_catalog_topic_with_its_kafka_settings(
    asyncapi: dict[str, Any],
) -> None:
    channels = {channel["address"]: channel for channel in asyncapi["channels"].values()}

    assert asyncapi["asyncapi"] == "3.0.0"
    assert set(channels) == {topic.name for topic in CATALOG}
    for topic in CATALOG:
        kafka = channels[topic.name]["bindings"]["kafka"]
        assert kafka["partitions"] == topic.partitions
        assert kafka["topicConfiguration"] == {
            "cleanup.policy": [topic.cleanup_policy],
            "retention.ms": topic.retention_ms,
        }
        assert topic.summary in channels[topic.name]["description"]


def test_asyncapi_has_a_message_per_event_type_keyed_by_patient_id(
    asyncapi: dict[str, Any],
) -> None:
    [events] = [c for c in asyncapi["channels"].values() if c["address"] == EVENTS.name]
    messages = [resolve(asyncapi, ref["$ref"]) for ref in events["messages"].values()]

    assert sorted(message["name"] for message in messages) == sorted(EVENT_MODELS)
    for message in messages:
        assert message["bindings"]["kafka"]["key"]["pattern"] == "^[A-Za-z0-9._:-]{1,64}$"
        payload = resolve(asyncapi, message["payload"]["$ref"])
        assert payload["properties"]["type"]["const"] == message["name"]


def test_asyncapi_documents_every_dead_letter_header(asyncapi: dict[str, Any]) -> None:
    [dlq] = [c for c in asyncapi["channels"].values() if c["address"] == EVENTS_DLQ.name]
    [message] = [resolve(asyncapi, ref["$ref"]) for ref in dlq["messages"].values()]

    assert set(dead_letter.HEADERS) == {
        "dlq.reason",
        "dlq.field",
        "dlq.kind",
        "dlq.original.topic",
        "dlq.original.partition",
        "dlq.original.offset",
        "dlq.failed_at",
        "dlq.value.truncated",
        "dlq.value.size",
        "dlq.value.sha256",
        "dlq.headers.dropped",
    }
    # Every header is always there but the offset, which a patient set aside may lack, and
    # those of a record too large to carry whole.
    assert set(message["headers"]["required"]) == set(dead_letter.HEADERS) - {
        dead_letter.ORIGINAL_OFFSET,
        dead_letter.VALUE_TRUNCATED,
        dead_letter.VALUE_SIZE,
        dead_letter.VALUE_SHA256,
        dead_letter.HEADERS_DROPPED,
    }
    assert set(message["headers"]["properties"]) == set(dead_letter.HEADERS)


def test_every_operation_sends_or_receives_on_a_catalog_channel(asyncapi: dict[str, Any]) -> None:
    used = set()
    for operation in asyncapi["operations"].values():
        channel = resolve(asyncapi, operation["channel"]["$ref"])
        used.add(channel["address"])
        assert operation["action"] in ("send", "receive")
        assert operation["messages"]

    assert used == {topic.name for topic in CATALOG}


def test_every_reference_in_the_asyncapi_document_resolves(asyncapi: dict[str, Any]) -> None:
    refs = list(references(asyncapi))

    assert refs
    for ref in refs:
        assert resolve(asyncapi, ref) is not None, ref


def references(node: Any) -> Any:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def resolve(document: dict[str, Any], ref: str) -> Any:
    """A local JSON Pointer reference (`#/components/messages/X`) in `document`."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# --- the JSON Schemas agree with the models (needs the optional `jsonschema` package) ---------


@pytest.fixture(scope="module")
def validator_for(documents: dict[Path, str]) -> Any:
    jsonschema = pytest.importorskip("jsonschema")

    def validator(event_type: str) -> Any:
        schema = json.loads(documents[schema_path(event_type)])
        jsonschema.Draft202012Validator.check_schema(schema)
        return jsonschema.Draft202012Validator(schema)

    return validator


def test_the_contract_example_is_valid_against_its_schema(validator_for: Any) -> None:
    validator_for(CONTRACT_EXAMPLE["type"]).validate(CONTRACT_EXAMPLE)


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_a_valid_sample_of_every_type_is_valid_against_its_schema(
    validator_for: Any, event_type: str
) -> None:
    validator_for(event_type).validate(valid_event(event_type, unknown_field=[1, 2]))


@pytest.mark.parametrize(
    ("event_type", "overrides"),
    [
        pytest.param("pain.trial.started.v1", {"time": "2026-03-02T09:30:00"}, id="naive-time"),
        pytest.param("pain.trial.started.v1", {"time": 1772440200}, id="time-number"),
        pytest.param("pain.trial.started.v1", {"daily_dose": 0}, id="dose-zero"),
        pytest.param("pain.trial.started.v1", {"daily_dose": "900"}, id="dose-string"),
        pytest.param("pain.trial.started.v1", {"specversion": "0.3"}, id="specversion"),
        pytest.param("pain.trial.started.v1", {"patient_id": "a" * 65}, id="patient-id-65"),
        pytest.param("pain.score.recorded.v1", {"score": 5.5}, id="nrs-not-whole"),
        pytest.param("pain.score.recorded.v1", {"score": 11}, id="nrs-11"),
        pytest.param(
            "pain.score.recorded.v1", {"instrument": "vas", "score": 100.5}, id="vas-100.5"
        ),
        pytest.param("pain.score.recorded.v1", {"instrument": "peg", "score": 10.1}, id="peg"),
        pytest.param("pain.condition.recorded.v1", {"onset_date": "2025-06-01T00:00"}, id="date"),
        pytest.param("pain.side_effect.reported.v1", {"trial_id": MISSING}, id="no-trial-nor-drug"),
        pytest.param(
            "pain.side_effect.reported.v1",
            {"trial_id": None, "drug": None},
            id="trial-and-drug-null",
        ),
        pytest.param("pain.diagnostic.resulted.v1", {"relief_percent": 101}, id="relief-101"),
        pytest.param("pain.trial.stopped.v1", {"reason": "bored"}, id="unknown-reason"),
    ],
)
def test_what_the_model_rejects_the_schema_rejects(
    validator_for: Any, event_type: str, overrides: dict[str, Any]
) -> None:
    event = valid_event(event_type, **overrides)

    with pytest.raises(ContractViolation):
        parse_event(event)
    assert list(validator_for(event_type).iter_errors(event)), "the schema accepted it"


# The edges of the contract a JSON Schema can say (a time's syntax, `null`, ranges), checked on
# the edge table the services are tested with. Repeated names, nesting, the time bounds and a
# number's digits are beyond JSON Schema (its validators read JSON as floats, last name wins).
SCHEMA_EDGES = [
    "time-lower-case-t-and-z",
    "time-with-a-space",
    "time-without-offset",
    "null-intolerable",
    "null-instrument",
    "null-trial-id-with-a-drug",
    "null-rxnorm",
    "null-classification-and-findings",
    "null-relief-percent",
    "null-datacontenttype",
    "null-required-score",
    "null-required-time",
    "nrs-score-5.000-is-whole",
    "onset-date-at-the-bounds",
]


@pytest.mark.parametrize("name", SCHEMA_EDGES)
def test_the_schema_agrees_with_the_contract_at_its_edges(validator_for: Any, name: str) -> None:
    [edge] = [edge for edge in EDGES if edge.name == name]
    event = json.loads(edge.text)

    errors = list(validator_for(event["type"]).iter_errors(event))

    assert (not errors) is edge.accepted, errors
