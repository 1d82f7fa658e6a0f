"""One patient's admitted events: the state the classifier keeps per patient.

Admission is where the idempotency key of the contract is applied: the same (source, id) again
with the same content is a duplicate and changes nothing; with other content it is a conflict
and is refused (the first one wins). Both the streaming service and `painpath classify` admit
events through here, so they always agree on what a patient's history is.

The history keeps the events' original JSON texts in arrival order, exactly what was received,
and the parsed events beside them; the streaming classifier drops the parsed events of patients
it has not decided for a while (`forget_parsed`) and parses them again when needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from shared.contract import Event, content, json_text, parse_event

CONFLICT_REASON = "an event with this source and id was already received with other content"


class Admission(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


def _key(event: Event) -> str:
    return f"{event.source}\x1f{event.id}"


def _canonical(text: str) -> str:
    return content(json_text.decode(text))


@dataclass
class PatientHistory:
    raw: dict[str, str] = field(default_factory=dict)  # (source, id) key -> original JSON text
    published: str | None = None  # the determination id last published for this patient
    # Parsed events beside the texts; None once dropped to save memory (parsed again on use).
    _parsed: list[Event] | None = field(default_factory=list)

    def admit(self, event: Event, text: str) -> Admission:
        key = _key(event)
        known = self.raw.get(key)
        if known is not None:
            same = known == text or _canonical(known) == _canonical(text)
            return Admission.DUPLICATE if same else Admission.CONFLICT
        self.raw[key] = text
        if self._parsed is not None:
            self._parsed.append(event)
        return Admission.NEW

    def forget_parsed(self) -> None:
        """Drop the parsed events (they are parsed again from the texts when needed)."""
        self._parsed = None

    @property
    def events(self) -> list[Event]:
        """The admitted events, parsed once per process (they were valid when admitted)."""
        if self._parsed is None:
            self._parsed = [parse_event(text) for text in self.raw.values()]
        return self._parsed
