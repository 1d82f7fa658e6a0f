"""The determination contract, `pain.determination.v1`: its model, its JSON Schema, its message.

What the classifier publishes must read back through the contract model and be valid against the
exported schema; what the model refuses the schema refuses; a field a later v1 adds is ignored.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from painpath.simulate import simulate
from services.classifier.offline import read_histories
from services.classifier.policy import load_policy
from services.classifier.rules import evaluate
from shared.contract import (
    DETERMINATION_TYPE,
    AssessmentPart,
    CombinationTrial,
    Determination,
    EventRef,
    Reason,
    Status,
    Trial,
    TrialOutcome,
)
from shared.contract.export import ASYNCAPI_PATH, render_documents, schema_path
from shared.topics import DETERMINATIONS
from tests import markdown
from tests.unit.test_contract_documents import resolve


@pytest.fixture(scope="module")
def published() -> list[str]:
    """What the classifier publishes for a simulated cohort, at two instants: the JSON text."""
    lines = [line if isinstance(line, str) else json.dumps(line) for line in simulate(40, 3)]
    histories, _ = read_histories(lines)
    policy = load_policy()
    return [
        evaluate(history.events, policy, as_of).model_dump_json()
        for as_of in (datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 6, 30, tzinfo=UTC))
        for history in histories.values()
    ]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(render_documents()[schema_path(DETERMINATION_TYPE)])


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_determination_is_versioned_like_the_events(schema: dict[str, Any]) -> None:
    assert DETERMINATION_TYPE == "pain.determination.v1"
    # The topic carries the model's version: a breaking change is a new name and a new topic.
    assert DETERMINATIONS.name.rsplit(".", 1)[1] == DETERMINATION_TYPE.rsplit(".", 1)[1]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://painpath.dev/schemas/{DETERMINATION_TYPE}.json"
    assert schema_path(DETERMINATION_TYPE) == Path(
        "docs/contract/schemas/pain.determination.v1.json"
    )


def test_every_member_the_classifier_writes_is_required(
    schema: dict[str, Any], published: list[str]
) -> None:
    written = {name for text in published for name in json.loads(text)}

    assert set(schema["required"]) == set(schema["properties"]) == written
    assert "determination_id" in written


def test_what_the_classifier_publishes_reads_back_and_is_valid_against_the_schema(
    published: list[str], validator: Any
) -> None:
    statuses = set()
    for text in published:
        body = json.loads(text)
        validator.validate(body)
        received = Determination.model_validate_json(text)
        assert received.model_dump_json() == text  # read back, written again: the same bytes
        statuses.add(received.status)
    assert len(statuses) >= 3  # the cohort exercises several kinds of determination


def test_a_field_a_later_v1_adds_is_ignored_by_a_reader(
    published: list[str], validator: Any
) -> None:
    body = json.loads(published[0]) | {"added_in_v1_later": {"any": "value"}}
    body["trials"] = [trial | {"also_added": 1} for trial in body["trials"]]

    validator.validate(body)
    received = Determination.model_validate(body)
    assert received.model_dump_json() == published[0]


def _with(text: str, path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    body = json.loads(text)
    node = body
    for part in path[:-1]:
        node = node[part]
    if value is _REMOVED:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


_REMOVED = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("determination_id",), _REMOVED, id="no-id"),
        pytest.param(("determination_id",), "", id="empty-id"),
        pytest.param(("status",), "cured", id="unknown-status"),
        pytest.param(("as_of",), "2026-06-30T00:00:00", id="as-of-without-offset"),
        pytest.param(("missing_assessments",), ["x_ray"], id="unknown-assessment-part"),
        pytest.param(("trials", 0, "outcome"), "maybe", id="unknown-trial-outcome"),
        pytest.param(("trials", 0, "dose_unit"), "ml", id="unknown-dose-unit"),
        pytest.param(("classification",), "psychogenic", id="unknown-classification"),
        pytest.param(("evidence_event_ids", 0), {"source": "urn:x"}, id="event-ref-without-id"),
        pytest.param(("patient_id",), _REMOVED, id="no-patient"),
    ],
)
def test_what_the_model_refuses_the_schema_refuses(
    published: list[str], validator: Any, path: tuple[str | int, ...], value: Any
) -> None:
    text = next(t for t in published if json.loads(t)["trials"] and json.loads(t)["classification"])
    body = _with(text, path, value)

    with pytest.raises(ValidationError):
        Determination.model_validate(body)
    assert list(validator.iter_errors(body)), "the schema accepted it"


def test_the_asyncapi_determinations_channel_carries_the_determination_schema(
    schema: dict[str, Any],
) -> None:
    asyncapi = yaml.safe_load(render_documents()[ASYNCAPI_PATH])
    [channel] = [c for c in asyncapi["channels"].values() if c["address"] == DETERMINATIONS.name]
    [message] = [resolve(asyncapi, ref["$ref"]) for ref in channel["messages"].values()]
    payload = resolve(asyncapi, message["payload"]["$ref"])

    assert message["name"] == DETERMINATION_TYPE
    assert message["bindings"]["kafka"]["key"]["pattern"] == "^[A-Za-z0-9._:-]{1,64}$"
    standalone = {key: value for key, value in schema.items() if not key.startswith("$")}
    as_in_asyncapi = json.loads(
        json.dumps(standalone).replace('"#/$defs/', '"#/components/schemas/')
    )
    assert payload == as_in_asyncapi
    for name, definition in schema["$defs"].items():
        assert asyncapi["components"]["schemas"][name] == json.loads(
            json.dumps(definition).replace('"#/$defs/', '"#/components/schemas/')
        )


# --- docs/contract/README.md says what the model holds ----------------------------------------

TEXT = (Path(__file__).resolve().parents[2] / "docs/contract/README.md").read_text("utf-8")


def _rows() -> dict[str, str]:
    """The determination's table: each field the `field` cell names -> the `meaning` cell."""
    section = markdown.sections(TEXT, "##")[f"The determination, `{DETERMINATION_TYPE}`"]
    return {
        name: row["meaning"]
        for row in markdown.table(section)
        for name in re.findall(r"`([a-z_]+)`", row["field"])
    }


def _names(text: str) -> set[str]:
    return set(re.findall(r"`([a-z_0-9.-]+)`", text))


def test_the_text_lists_every_field_of_the_determination_and_no_other() -> None:
    assert list(_rows()) == list(Determination.model_fields)


def test_the_text_names_the_model_s_values_and_members() -> None:
    rows = _rows()
    assert _names(rows["status"]) == {status.value for status in Status}
    assert _names(rows["missing_assessments"]) == {part.value for part in AssessmentPart}
    trials = rows["trials"]
    assert set(Trial.model_fields) <= _names(trials)
    assert _names(trials) - set(Trial.model_fields) == {outcome.value for outcome in TrialOutcome}
    assert _names(rows["combinations"]) == set(CombinationTrial.model_fields)
    assert _names(rows["reasons"]) == set(Reason.model_fields)
    assert _names(rows["evidence_event_ids"]) == set(EventRef.model_fields)
    assert f"`{schema_path(DETERMINATION_TYPE)}`" in TEXT
    assert f"`{DETERMINATIONS.name}`" in TEXT
