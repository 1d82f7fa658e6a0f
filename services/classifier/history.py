"""One patient's admitted events: the state the classifier keeps per patient.

Admission is where the idempotency key of the contract is applied: the same (source, id) again
with the same content is a duplicate and changes nothing; with other content it is a conflict
and is refused (the first one wins). Both the streaming service and `painpath classify` admit
events through here, so they always agree on what a patient's history is.

The history keeps the events' original JSON texts in arrival order, exactly what was received.
Parsed events cost about four times their text in memory (about 2 KB each, pydantic models), so
the streaming classifier keeps them only for patients it decides for live traffic (a bounded
cache, `ParsedCache`) and parses the texts again when it decides anyone else; `painpath
classify` keeps them (`keeping_parsed`), since it decides every patient once, at the end.
"""

from __future__ import annotations

from collections.abc import Callable
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


class PatientHistory:
    """One patient's admitted events (their texts), the determination id last published, and
    maybe the parsed events.

    A history restored from a checkpoint may come as a `load` function instead of its texts (the
    local store's compressed document, not decoded yet): most patients of a partition that moves
    get no event soon, so a new owner is ready once it has read the documents, and each one is
    decoded on its first use (and costs its compressed size until then, about a fifth)."""

    __slots__ = ("_raw", "_load", "published", "_parsed")

    def __init__(
        self,
        raw: dict[str, str] | None = None,
        published: str | None = None,
        *,
        load: Callable[[], dict[str, str]] | None = None,
        _parsed: list[Event] | None = None,
    ):
        self._raw = raw if raw is not None or load is not None else {}
        self._load = load if raw is None else None
        self.published = published  # the determination id last published for this patient
        # Parsed events beside the texts, or None (the texts only: parsed again on use).
        self._parsed = _parsed

    @classmethod
    def keeping_parsed(cls) -> PatientHistory:
        """A history that keeps the parsed events of what it admits beside their texts."""
        return cls(_parsed=[])

    @property
    def raw(self) -> dict[str, str]:
        """(source, id) key -> original JSON text, in arrival order."""
        if self._raw is None:
            assert self._load is not None
            self._raw, self._load = self._load(), None
        return self._raw

    @raw.setter
    def raw(self, value: dict[str, str]) -> None:
        self._raw, self._load = value, None

    @property
    def loaded(self) -> bool:
        """Whether the texts are decoded (a restored history is decoded on first use)."""
        return self._raw is not None

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
        """The admitted events; parsed from the texts when not kept (they were valid when
        admitted), and kept from then on until `forget_parsed`."""
        if self._parsed is None:
            self._parsed = [parse_event(text) for text in self.raw.values()]
        return self._parsed
