"""JSON read the one way the contract allows: exact numbers, no repeated names, bounded nesting.

RFC 8259 leaves a repeated member name's meaning open and lets parsers round numbers; two readers
of one event must never see two events. So every event is decoded here, by `jiter` (the JSON
parser of pydantic-core, here as its own package): numbers as `Decimal`, exactly as written
(`5.0000000000000000001` stays itself, `1e-400` is not 0), a repeated member name refused, NaN
and Infinity refused. What jiter refuses is scanned again here to name the field at fault.

Limits a store can keep and a rule can compute with (the contract's "numbers" are decimals):
- nesting: at most `MAX_DEPTH` levels, objects and arrays counted together, the event itself
  being the first;
- numbers: finite in binary64's range (so `1e400` is refused, as every JSON reader would turn it
  into infinity), not so small that binary64 reads them as 0 (`1e-400`), and at most
  `MAX_DIGITS` significant digits (IEEE 754 decimal128's precision).

A field is named as the contract names it: an envelope member (`time`) or a member of `data`
(`data.findings`), never the free-form names inside it, which may be clinical text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from itertools import accumulate
from typing import Any

import jiter
import simplejson

MAX_DEPTH = 32
MAX_DIGITS = 34
_DOUBLE_MAX = Decimal("1.7976931348623157e308")

NOT_JSON = "not valid JSON"
DEPTH_REASON = f"nests deeper than {MAX_DEPTH} levels"
REPEATED_REASON = "repeats a member name"
OVERFLOW_REASON = "numbers must be finite (NaN and Infinity are not JSON, nor is 1e400)"
UNDERFLOW_REASON = "a number too small to be told from 0 (below 1e-308)"
DIGITS_REASON = f"a number with more than {MAX_DIGITS} significant digits"

# Strings, runs of opening or of closing brackets, commas and colons; scalars are skipped.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{\[]+|[}\]]+|[,:]')

Problem = tuple[str, str]  # (field, reason)


class JsonTextError(ValueError):
    """The text is not one JSON value the contract accepts; `problems` name field and reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in problems))


def field_name(path: tuple[int | str, ...]) -> str:
    """The contract's name of where `path` is: an envelope member or a member of `data`."""
    if not path:
        return "(event)"
    head = path[0]
    if head == "data" and len(path) > 1 and isinstance(path[1], str):
        return f"data.{path[1]}"
    return str(head) if isinstance(head, str) else "(event)"


def decode(raw: bytes | str) -> Any:
    """One event's JSON value, numbers as `Decimal` (or int); raises JsonTextError.

    Numbers are judged where they are read: the contract's number fields, and the free-form
    parts (`number_problems`) once the event's shape is known.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    try:
        value = jiter.from_json(
            data, allow_inf_nan=False, catch_duplicate_keys=True, float_mode="decimal"
        )
    except ValueError:
        value = _decode_slowly(data)
    problems = check(value, deep=data.count(b"[") + data.count(b"{") > MAX_DEPTH)
    if problems:
        raise JsonTextError(problems)
    return value


def check(value: Any, *, deep: bool = True) -> list[Problem]:
    """Nesting of an already decoded value (`deep=False` when it cannot be too deep)."""
    if not deep:
        return []
    found = _too_deep(value)
    return [(field_name(found), DEPTH_REASON)] if found is not None else []


def number_problems(value: Any) -> list[Problem]:
    """The numbers of an already decoded value that break a limit (floats are read as written)."""
    return list(_number_problems(value, ()))


def _too_deep(value: Any) -> tuple[int | str, ...] | None:
    """The path of the first container past `MAX_DEPTH` levels, None if there is none."""
    stack: list[tuple[Any, tuple[int | str, ...], int]] = [(value, (), 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            children = ((key, child) for key, child in item.items())
        elif isinstance(item, list):
            children = enumerate(item)
        else:
            continue
        if depth > MAX_DEPTH:
            return path
        for key, child in children:
            if isinstance(child, dict | list):
                stack.append((child, (*path, key), depth + 1))
    return None


def _number_problems(value: Any, path: tuple[int | str, ...]) -> Iterator[Problem]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _number_problems(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _number_problems(child, (*path, index))
    elif isinstance(value, Decimal | int | float) and not isinstance(value, bool):
        reason = number_reason(value)
        if reason is not None:
            yield field_name(path), reason
    elif not isinstance(value, str | bool | date | None):  # no JSON value (a set, an object)
        yield field_name(path), NOT_JSON


def number_reason(value: Decimal | int | float) -> str | None:
    """Why a number breaks the limits, None when it keeps them."""
    if isinstance(value, int) and -_SMALL_INT < value < _SMALL_INT:
        return None  # the common case, decided at once
    number = value if isinstance(value, Decimal) else Decimal(repr(value))
    if not number.is_finite() or abs(number) > _DOUBLE_MAX:
        return OVERFLOW_REASON
    if not number:
        return None
    if number.adjusted() < -308:
        return UNDERFLOW_REASON
    digits = number.as_tuple().digits
    if len(digits) > MAX_DIGITS and len("".join(map(str, digits)).rstrip("0")) > MAX_DIGITS:
        return DIGITS_REASON  # trailing zeros are no precision: `5.000...0` is 5
    return None


_SMALL_INT = 10**15


def _decode_slowly(data: bytes) -> Any:
    """What jiter refused: named problems (nesting, repeated names), else the standard parser.

    The standard library's parser keeps lone surrogates (`\\ud800`), which jiter refuses as
    invalid JSON, so that the contract can name the field that holds one.
    """
    try:
        text = data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise JsonTextError([("(event)", NOT_JSON)]) from None
    problems = _scan(text)[0]
    if problems:
        raise JsonTextError(problems)
    try:
        # NaN and Infinity are read, as non-finite decimals, only to be refused by field.
        return json.loads(text, parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, RecursionError):
        raise JsonTextError([("(event)", NOT_JSON)]) from None


def split_array(data: bytes) -> list[bytes] | None:
    """The texts of a top-level JSON array's elements, None when `data` is no such array.

    For a batch jiter refused as a whole (one event repeats a name or nests too deep): each
    element is then read on its own, so that one bad event does not take the others with it.
    """
    try:
        text = data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    stripped = text.strip()
    if not stripped.startswith("["):
        return None
    _, spans = _scan(stripped)
    if spans is None:
        return None
    return [stripped[start:end].strip().encode("utf-8", "surrogatepass") for start, end in spans]


def _closes(text: str) -> bool:
    """Whether the brackets of a text (outside its strings) balance and close once, at the end.

    At the speed of the regular expression engine and of `itertools`, whatever the text's size,
    so that a hostile body (a megabyte of `[`) costs little to refuse.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return False
    depths = list(accumulate(map(_DELTA.__getitem__, brackets)))
    return depths[-1] == 0 and min(depths) >= 0 and depths.index(0) == len(depths) - 1


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}


def _scan(text: str) -> tuple[list[Problem], list[tuple[int, int]] | None]:
    """Repeated names and nesting past the limit, named per contract field, with the spans of
    the elements when the text is a top-level array (None when it is not a well-formed one).

    A top-level array's elements are judged as events of their own (a batch): each one's depth
    counts from the element, and problems are collected for no element in particular.
    """
    problems: list[Problem] = []
    # Frames: [kind, current key or index, names seen, expecting a member name].
    stack: list[list[Any]] = []
    batch = text.startswith("[")
    spans: list[tuple[int, int]] = []
    element_start = 1
    ended = False
    reported: set[tuple[str, str]] = set()

    def path(frames: list[list[Any]]) -> tuple[int | str, ...]:
        # Only the first levels name a contract field (`field_name`): read no more of them.
        frames = frames[1:4] if batch else frames[:3]
        return tuple(frame[1] for frame in frames if frame[1] is not None)

    def report(reason: str, at: tuple[int | str, ...]) -> None:
        problem = (field_name(at), reason)
        if problem not in reported:
            reported.add(problem)
            problems.append(problem)

    last_end = 0
    excess = 0  # levels past the limit: only counted, their names are no contract field's
    for match in _TOKEN.finditer(text):
        token = match.group()
        last_end = match.end()
        if ended:
            return problems, None  # something after the closing bracket
        if token[0] in "{[":
            for opener in token:
                if excess:
                    excess += 1
                    continue
                depth = len(stack) + (0 if batch else 1)
                if depth == MAX_DEPTH + 1:  # where the too-deep value starts
                    report(DEPTH_REASON, path(stack))
                    excess = 1
                    continue
                stack.append([opener, None if opener == "{" else 0, set(), True])
            continue
        if token[0] in "}]":
            for offset in range(len(token)):
                if excess:
                    excess -= 1
                    continue
                if not stack or ended:
                    return problems, None
                stack.pop()
                if batch and len(stack) == 0:
                    spans.append((element_start, match.start() + offset))
                    ended = True
            continue
        if excess:
            continue
        frame = stack[-1] if stack else None
        if token == ",":
            if frame is None:
                return problems, None
            if frame[0] == "{":
                frame[3] = True
            else:
                frame[1] += 1
                if batch and len(stack) == 1:
                    spans.append((element_start, match.start()))
                    element_start = match.end()
        elif token == ":":
            continue
        elif frame is not None and frame[0] == "{" and frame[3]:  # a member name
            try:
                name = json.loads(token)
            except ValueError:
                name = token
            if name in frame[2]:
                report(REPEATED_REASON, (*path(stack[:-1]), name))
            frame[2].add(name)
            frame[1] = name
            frame[3] = False
    if not batch or not ended or stack or excess or text[last_end:].strip():
        return problems, None
    if len(spans) == 1 and not text[spans[0][0] : spans[0][1]].strip():
        spans = []  # `[]`
    if any(not text[start:end].strip() for start, end in spans):
        return problems, None  # `[a,,b]`
    return problems, spans


def dumps(value: Any) -> str:
    """Compact JSON of a decoded value, numbers exactly as decoded (simplejson's C writer, which
    writes a `Decimal` as its own text; the standard library's cannot)."""
    return simplejson.dumps(value, use_decimal=True, separators=(",", ":"), ensure_ascii=False)


def canonical(value: Any) -> str:
    """The content of a decoded value: sorted keys, compact, numbers by value (`5.00` is `5.0`).

    A number a binary64 float holds exactly as written is written as Python writes that float
    (`5.0`, `0.3`), the form contents were compared in before numbers were read exactly, so the
    content hashes kept by the gateway stay valid; any other is written exactly, marked by a NUL
    (which no accepted string holds, so it never equals a string's text).
    """
    return simplejson.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        use_decimal=False,
        default=_canonical_number,
    )


def _canonical_number(number: Any) -> Any:
    if not isinstance(number, Decimal):
        raise TypeError(f"{type(number).__name__} is not JSON")
    as_float = float(number)
    if Decimal(repr(as_float)) == number:
        return as_float
    sign, digits, exponent = number.as_tuple()
    coefficient = "".join(map(str, digits)).rstrip("0")
    exponent = int(exponent) + len(digits) - len(coefficient)
    return f"\x00{'-' if sign else ''}{coefficient}e{exponent}"


def plain(data: bytes) -> bool:
    """Whether no event of a body can nest too deep nor hold a `\\u` escape (a NUL, a lone
    surrogate), at the regular expression engine's speed: its events then need neither walk."""
    if b"\\u" in data:
        return False
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return True
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", data.decode("utf-8", "replace")))
    deepest = max(accumulate(map(_DELTA.__getitem__, brackets)), default=0)
    batch = data.lstrip().startswith(b"[")  # a batch's own array is no level of its events
    return deepest <= MAX_DEPTH + batch


def decode_batch(data: bytes) -> list[Any]:
    """The events of a request body: one event or a JSON array of them.

    Each item is its decoded value or, when the body as a whole broke a rule of the contract (a
    repeated name, nesting too deep, NaN), its own text, read on its own by `parse_event` so that
    one bad event takes no other with it. Raises JsonTextError when the body is no JSON at all,
    or an array with an element that is not JSON; ValueError when it is neither object nor array.
    """
    try:
        return decode_batch_fast(data)
    except NeedsSlowPath:
        data = _as_utf8(data)
        if not _closes(data.decode("utf-8", "replace")):
            raise JsonTextError([("(body)", NOT_JSON)]) from None
        parts = split_array(data)
        for part in parts if parts is not None else [data]:
            if _not_json(part):
                raise JsonTextError([("(body)", NOT_JSON)]) from None
        return parts if parts is not None else [data]


_NOT_UTF8_STARTS = (b"\xef", b"\xfe", b"\xff", b"\x00")


def _as_utf8(data: bytes) -> bytes:
    """A body in UTF-8, from UTF-16 or UTF-32 or past a byte order mark, as `json.loads` reads
    bytes (RFC 8259 8.1: a receiver may ignore the mark); anything else is left as it is."""
    encoding = json.detect_encoding(data)
    if encoding == "utf-8":
        return data
    try:
        return data.decode(encoding).encode("utf-8", "surrogatepass")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return data


class NeedsSlowPath(ValueError):
    """jiter refused the body: it is to be read again by `decode_batch`, element by element."""


def decode_batch_fast(data: bytes) -> list[Any]:
    """`decode_batch` when jiter takes the body as it is; raises NeedsSlowPath otherwise."""
    if data[:1] in _NOT_UTF8_STARTS or data[1:2] == b"\x00":
        raise NeedsSlowPath  # a byte order mark, or UTF-16 / UTF-32
    try:
        document = jiter.from_json(
            data, allow_inf_nan=False, catch_duplicate_keys=True, float_mode="decimal"
        )
    except ValueError:
        raise NeedsSlowPath from None
    if isinstance(document, dict):
        return [document]
    if isinstance(document, list):
        return document
    raise ValueError("the body must be an event object or an array of events")


def _not_json(part: bytes) -> bool:
    """Whether a text is no JSON at all, as opposed to JSON that breaks a rule of the contract
    (a repeated name, NaN, a lone surrogate, nesting too deep for a recursive parser)."""
    try:
        text = part.decode("utf-8", "surrogatepass")
        json.loads(text, object_pairs_hook=list, parse_constant=Decimal)
    except RecursionError:  # deeper than a recursive parser goes: JSON if its brackets close
        return not _closes(text)
    except ValueError:  # UnicodeDecodeError included
        return True
    return False
