"""The contract's machine-readable documents, generated from the models and the topic catalog.

- `docs/contract/schemas/<type>.json`: one JSON Schema (draft 2020-12) per event type, envelope
  and data, and one for the determination (`pain.determination.v1.json`), each with `$id`
  `https://painpath.dev/schemas/<name>.json`.
- `docs/contract/asyncapi.yaml`: an AsyncAPI 3.0.0 document of every topic in the catalog, with
  the same schemas inlined into `components.schemas` (where AsyncAPI tooling looks).

Nothing here is written by hand: `export` regenerates both, and `export(check=True)` reports the
committed files that have drifted from the models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from shared import dead_letter
from shared.contract.determinations import DETERMINATION_TYPE, Determination
from shared.contract.events import EVENT_MODELS, PatientId
from shared.topics import (
    CARE_TASKS,
    CATALOG,
    DETERMINATIONS,
    DETERMINATIONS_BACKFILL,
    EVENTS,
    EVENTS_BACKFILL,
    EVENTS_DLQ,
    Topic,
)

CONTRACT_VERSION = "1.0.0"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_BASE = "https://painpath.dev/schemas/"

DOCS_DIR = Path("docs/contract")
SCHEMAS_DIR = DOCS_DIR / "schemas"
ASYNCAPI_PATH = DOCS_DIR / "asyncapi.yaml"

KAFKA_BINDING_VERSION = "0.5.0"


class ContractJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema generator (the times and numbers bring their own schemas)."""


def schema_path(name: str) -> Path:
    """The JSON Schema of an event type or of the determination, by its versioned name."""
    return SCHEMAS_DIR / f"{name}.json"


def event_schema(event_type: str) -> dict[str, Any]:
    """The standalone JSON Schema of one event type: envelope, data and their definitions."""
    schema = EVENT_MODELS[event_type].model_json_schema(schema_generator=ContractJsonSchema)
    _optional_may_be_null(schema)
    for definition in schema.get("$defs", {}).values():
        _optional_may_be_null(definition)
    return {"$schema": SCHEMA_DIALECT, "$id": f"{SCHEMA_ID_BASE}{event_type}.json", **schema}


def determination_schema() -> dict[str, Any]:
    """The standalone JSON Schema of the determination, as the classifier publishes it."""
    schema = Determination.model_json_schema(schema_generator=ContractJsonSchema)
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": f"{SCHEMA_ID_BASE}{DETERMINATION_TYPE}.json",
        **schema,
    }


def _optional_may_be_null(schema: dict[str, Any]) -> None:
    """An optional member sent as `null` is the member left out (CONTRACT.md): say so."""
    required = set(schema.get("required", ()))
    for name, member in schema.get("properties", {}).items():
        if name in required or {"type": "null"} in member.get("anyOf", ()):
            continue
        notes = {
            key: member.pop(key) for key in ("title", "description", "default") if key in member
        }
        schema["properties"][name] = {"anyOf": [dict(member), {"type": "null"}], **notes}


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the topic catalog."""
    refs, definitions = models_json_schema(
        [(model, "validation") for model in EVENT_MODELS.values()],
        ref_template="#/components/schemas/{model}",
        schema_generator=ContractJsonSchema,
    )
    for definition in definitions.get("$defs", {}).values():
        _optional_may_be_null(definition)
    # The determination's own definitions: a `null` for an optional member is an event rule only.
    determination_refs, determination_definitions = models_json_schema(
        [(Determination, "validation")],
        ref_template="#/components/schemas/{model}",
        schema_generator=ContractJsonSchema,
    )
    for name, definition in determination_definitions["$defs"].items():
        if definitions["$defs"].setdefault(name, definition) != definition:
            raise ValueError(f"two contract schemas are named {name}")
    patient_key = TypeAdapter(PatientId).json_schema()

    event_messages = {
        model.__name__: {
            "name": event_type,
            "title": model.__name__,
            "summary": f"A `{event_type}` clinical event (CloudEvents 1.0, structured JSON).",
            "contentType": "application/cloudevents+json",
            "payload": refs[(model, "validation")],
            "bindings": _key_binding(patient_key),
        }
        for event_type, model in EVENT_MODELS.items()
    }
    messages_by_topic: dict[str, dict[str, Any]] = {
        EVENTS.name: event_messages,
        EVENTS_BACKFILL.name: event_messages,
        EVENTS_DLQ.name: {"RejectedEvent": _rejected_event_message()},
        DETERMINATIONS.name: {
            "Determination": {
                "name": DETERMINATION_TYPE,
                "title": "Determination",
                "summary": (
                    "One patient's refractory status as of an instant under a policy, with the"
                    f" figures and reasons behind it (`{DETERMINATION_TYPE}`)."
                ),
                "contentType": "application/json",
                "payload": determination_refs[(Determination, "validation")],
                "bindings": _key_binding(patient_key),
            }
        },
        CARE_TASKS.name: {
            "CareTaskChange": _unspecified_message(
                "CareTaskChange", "the coordinator", CARE_TASKS, patient_key
            )
        },
    }
    messages_by_topic[DETERMINATIONS_BACKFILL.name] = messages_by_topic[DETERMINATIONS.name]

    channels = {
        _identifier(topic.name): _channel(topic, messages_by_topic[topic.name]) for topic in CATALOG
    }
    operations = {
        operation_id: {
            "action": action,
            "channel": {"$ref": f"#/channels/{_identifier(topic.name)}"},
            "summary": summary,
            "messages": [
                {"$ref": f"#/channels/{_identifier(topic.name)}/messages/{message_id}"}
                for message_id in messages_by_topic[topic.name]
            ],
        }
        for operation_id, action, topic, summary in _OPERATIONS
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Painpath",
            "version": CONTRACT_VERSION,
            "description": (
                "Event-driven care coordination for refractory chronic pain. Hospital systems"
                " publish clinical events (the clinical event contract, version 1: CloudEvents"
                " 1.0 in structured JSON mode); the classifier decides refractory status from"
                " them and the coordinator turns determinations into care-plan tasks. Every"
                " patient topic is keyed by `patient_id` and has the same partition count, so"
                " that a patient's events, state and outputs stay on the same partition."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": definitions["$defs"],
            "messages": {
                message_id: message
                for messages in messages_by_topic.values()
                for message_id, message in messages.items()
            },
        },
    }


# Who writes and who reads each topic: (operation id, action, topic, summary).
_OPERATIONS: tuple[tuple[str, str, Topic, str], ...] = (
    (
        "gatewayPublishesEvents",
        "send",
        EVENTS,
        "The ingest gateway publishes each accepted event, keyed by `data.patient_id`.",
    ),
    (
        "classifierConsumesEvents",
        "receive",
        EVENTS,
        "The classifier validates each event and folds it into the patient's history.",
    ),
    (
        "classifierDeadLettersEvents",
        "send",
        EVENTS_DLQ,
        "The classifier copies a record that breaks the contract here, with headers saying why.",
    ),
    (
        "classifierPublishesDeterminations",
        "send",
        DETERMINATIONS,
        "The classifier publishes a determination when a patient's status or evidence changes.",
    ),
    (
        "coordinatorConsumesDeterminations",
        "receive",
        DETERMINATIONS,
        "The coordinator turns each determination into care-plan changes.",
    ),
    (
        "backfillLoadersPublishEvents",
        "send",
        EVENTS_BACKFILL,
        "A bulk load (a site's history, a re-import) publishes its events here, keyed by"
        " `data.patient_id` as on pain.events.v1.",
    ),
    (
        "classifierConsumesBackfill",
        "receive",
        EVENTS_BACKFILL,
        "The classifier folds backfill events into the same histories, after the live topic's.",
    ),
    (
        "classifierPublishesBackfillDeterminations",
        "send",
        DETERMINATIONS_BACKFILL,
        "A determination caused by backfill events alone goes here, not ahead of live ones.",
    ),
    (
        "coordinatorConsumesBackfillDeterminations",
        "receive",
        DETERMINATIONS_BACKFILL,
        "The coordinator applies these after the live ones; the later `as_of` is followed.",
    ),
    (
        "coordinatorPublishesCareTasks",
        "send",
        CARE_TASKS,
        "The coordinator relays care-plan task changes from its outbox, in sequence.",
    ),
)


def _identifier(topic_name: str) -> str:
    """`pain.events.dlq.v1` -> `painEventsDlqV1`: a channel id that code generators accept."""
    first, *rest = re.split(r"[^A-Za-z0-9]+", topic_name)
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _channel(topic: Topic, messages: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": topic.name,
        "title": topic.name,
        "description": f"{topic.summary} Key: {topic.key}.",
        "messages": {
            message_id: {"$ref": f"#/components/messages/{message_id}"} for message_id in messages
        },
        "bindings": {
            "kafka": {
                "topic": topic.name,
                "partitions": topic.partitions,
                "topicConfiguration": {
                    "cleanup.policy": [topic.cleanup_policy],
                    "retention.ms": topic.retention_ms,
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _key_binding(key_schema: dict[str, Any]) -> dict[str, Any]:
    return {"kafka": {"key": key_schema, "bindingVersion": KAFKA_BINDING_VERSION}}


_DLQ_HEADER_FORMATS: dict[str, dict[str, str]] = {
    dead_letter.ORIGINAL_PARTITION: {"pattern": "^[0-9]+$"},
    dead_letter.ORIGINAL_OFFSET: {"pattern": "^[0-9]+$"},
    dead_letter.FAILED_AT: {"format": "date-time"},
    dead_letter.VALUE_SIZE: {"pattern": "^[0-9]+$"},
    dead_letter.VALUE_SHA256: {"pattern": "^[0-9a-f]{64}$"},
    dead_letter.VALUE_TRUNCATED: {"enum": ["true"]},
    dead_letter.HEADERS_DROPPED: {"pattern": "^[0-9]+$"},
}


def _rejected_event_message() -> dict[str, Any]:
    return {
        "name": "rejected-event",
        "title": "Rejected event",
        "summary": EVENTS_DLQ.summary,
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "description": "The original record's headers are kept, and these are added.",
            # A patient set aside read nothing of its partition yet, rarely: no offset then; a
            # record too large to carry whole has its size and hash.
            "required": [name for name in dead_letter.HEADERS if name not in dead_letter.OPTIONAL],
            "properties": {
                name: {"type": "string", "description": description}
                | _DLQ_HEADER_FORMATS.get(name, {})
                for name, description in dead_letter.HEADERS.items()
            },
            "additionalProperties": True,
        },
        "payload": {
            "description": "The original record's value, byte for byte (its first 64 KiB when"
            " `dlq.value.truncated`: the record did not fit in one message); it may not be JSON."
            " For `dlq.kind: quarantine` (a patient set aside), a JSON object listing the events"
            " that were being decided: `{kind, error, raised_in, policy, as_of, event_count, part,"
            " parts, events: [{source, id}]}`.",
        },
        "bindings": _key_binding(
            {"type": "string", "description": "The original record's key, unchanged."}
        ),
    }


def _unspecified_message(
    message_id: str, owner: str, topic: Topic, key_schema: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": message_id,
        "title": message_id,
        "summary": topic.summary,
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "additionalProperties": True,
            "description": f"Schema defined by {owner}; not specified here yet.",
        },
        "bindings": _key_binding(key_schema),
    }


class _Dumper(yaml.SafeDumper):
    """Writes every repeated object out in full: anchors and aliases confuse AsyncAPI tools."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _yaml_text(document: dict[str, Any]) -> str:
    return yaml.dump(
        document, Dumper=_Dumper, sort_keys=True, allow_unicode=True, width=100, indent=2
    )


def render_documents() -> dict[Path, str]:
    """Every document, by path relative to the repository root, as its exact text."""
    documents = {
        schema_path(event_type): _json_text(event_schema(event_type)) for event_type in EVENT_MODELS
    }
    documents[schema_path(DETERMINATION_TYPE)] = _json_text(determination_schema())
    documents[ASYNCAPI_PATH] = _yaml_text(asyncapi_document())
    return documents


def export(root: Path, check: bool = False) -> list[Path]:
    """Bring the documents under `root` up to date; return the files that were out of date.

    Out of date means missing, different from the models, or a schema in `docs/contract/schemas`
    for a type that no longer exists. With `check`, nothing is written or removed.
    """
    documents = render_documents()
    stale = [
        path
        for path, text in documents.items()
        if not (root / path).is_file() or (root / path).read_bytes() != text.encode()
    ]
    extra = [
        path.relative_to(root)
        for path in (root / SCHEMAS_DIR).glob("*.json")
        if path.relative_to(root) not in documents
    ]
    if not check:
        for path in stale:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(documents[path].encode())
        for path in extra:
            (root / path).unlink()
    return sorted(stale + extra)
