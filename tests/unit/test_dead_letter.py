"""A dead letter always fits in one broker message (`shared.dead_letter.build`)."""

from __future__ import annotations

import hashlib

from shared import dead_letter

REASON = [
    (dead_letter.REASON, b"(event): larger than 512 KiB"),
    (dead_letter.FIELD, b"(event)"),
    (dead_letter.KIND, b"size"),
]


def test_a_record_that_fits_is_carried_whole_with_its_headers_and_the_reason():
    letter = dead_letter.build(b"pt-1", b"{}", [("traceparent", b"00-x")], REASON)

    assert (letter.key, letter.value) == (b"pt-1", b"{}")
    assert letter.headers == [("traceparent", b"00-x"), *REASON]


def test_a_2_mib_value_is_cut_to_a_prefix_with_its_size_and_sha256_and_keeps_the_reason():
    value = bytes(range(256)) * (8 * 1024)  # 2 MiB
    letter = dead_letter.build(b"pt-1", value, [("traceparent", b"00-x")], REASON)
    headers = dict(letter.headers)

    assert letter.size <= dead_letter.MAX_DEAD_LETTER_BYTES
    assert letter.value == value[: dead_letter.TRUNCATED_PREFIX_BYTES]
    assert headers[dead_letter.VALUE_TRUNCATED] == b"true"
    assert headers[dead_letter.VALUE_SIZE] == str(len(value)).encode()
    assert headers[dead_letter.VALUE_SHA256] == hashlib.sha256(value).hexdigest().encode()
    assert headers[dead_letter.KIND] == b"size" and headers["traceparent"] == b"00-x"
    assert dead_letter.HEADERS_DROPPED not in headers


def test_headers_too_large_to_fit_are_left_out_and_counted():
    huge = [(f"h{n}", b"x" * 300_000) for n in range(4)]
    letter = dead_letter.build(b"pt-1", b"{}", huge, REASON)
    headers = dict(letter.headers)

    assert letter.size <= dead_letter.MAX_DEAD_LETTER_BYTES
    assert headers[dead_letter.HEADERS_DROPPED] == b"4" and "h0" not in headers
    assert headers[dead_letter.REASON] == REASON[0][1] and letter.value == b"{}"


def test_a_reason_listing_thousands_of_violations_is_cut_short():
    long_reason = [(dead_letter.REASON, b"data.x: too long; " * 100_000)]
    letter = dead_letter.build(b"pt-1", b"{}", None, long_reason)

    assert len(dict(letter.headers)[dead_letter.REASON]) == dead_letter.MAX_REASON_BYTES
