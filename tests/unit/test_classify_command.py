"""`painpath classify` and the admission of events it shares with the streaming classifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.classifier.history import Admission, PatientHistory
from services.classifier.offline import read_histories
from shared.contract import parse_event
from tests.samples import valid_event

AS_OF = "2026-06-30T00:00:00Z"


def line(**overrides) -> str:
    return json.dumps(valid_event("pain.score.recorded.v1", **overrides))


def test_the_same_event_again_is_a_duplicate_and_other_content_a_conflict():
    history = PatientHistory()
    first = line(id="e1", score=5)
    reordered = json.dumps(dict(reversed(json.loads(first).items())))

    assert history.admit(parse_event(first), first) is Admission.NEW
    assert history.admit(parse_event(reordered), reordered) is Admission.DUPLICATE
    other = line(id="e1", score=6)
    assert history.admit(parse_event(other), other) is Admission.CONFLICT
    assert [event.data.score for event in history.events] == [5]


def test_a_history_that_forgot_its_parsed_events_parses_them_again():
    history = PatientHistory()
    for number in range(3):
        text = line(id=f"e{number}", score=number)
        history.admit(parse_event(text), text)
    history.forget_parsed()
    history.admit(parse_event(line(id="e3", score=3)), line(id="e3", score=3))

    assert [event.id for event in history.events] == ["e0", "e1", "e2", "e3"]


def test_the_history_topic_framing_keeps_each_events_bytes():
    from services.classifier.stream import _chunks, decode_history, encode_history

    texts = [b'{"a": 1}', '{\n  "b": "\u00e9"\n}'.encode(), b"x" * 300_000, b"{}"]
    chunks = list(_chunks(texts, limit=200_000))

    assert [len(chunk) for chunk in chunks] == [2, 1, 1]  # a big event alone
    assert [text for chunk in chunks for text in decode_history(encode_history(chunk))] == texts


def test_the_file_reader_names_refused_lines_and_keeps_the_first_of_an_id():
    lines = [line(id="e1", score=5), "{oops", line(id="e1", score=9), "", line(id="e2", score=11)]

    histories, refused = read_histories(lines)

    assert [(bad.line, bad.reason.split(":")[0]) for bad in refused] == [
        (2, "(event)"),
        (3, "id"),
        (5, "data.score"),
    ]
    [history] = histories.values()
    assert [event.data.score for event in history.events] == [5]


def run_classify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "painpath", "classify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_classify_prints_one_sorted_object_per_patient_and_reports_bad_lines(tmp_path: Path):
    feed = tmp_path / "feed.jsonl"
    patients = ["pt-b-000002", "pt-a-000001"]
    rows = [line(id=f"e-{p}", patient_id=p, time="2026-01-01T00:00:00Z") for p in patients]
    feed.write_text("\n".join([rows[0], "not json", rows[1]]) + "\n")

    result = run_classify(str(feed), "--as-of", AS_OF)

    assert result.returncode == 0, result.stderr
    printed = [json.loads(row) for row in result.stdout.splitlines()]
    assert [d["patient_id"] for d in printed] == sorted(patients)
    assert all(d["as_of"].startswith("2026-06-30T00:00:00") for d in printed)
    assert {"status", "policy", "pain_days", "current_pain", "trials", "reasons"} <= set(printed[0])
    assert "line 2: (event): not valid JSON" in result.stderr
    assert "pt-a-000001" not in result.stderr


def test_classify_explain_prints_readable_reasons(tmp_path: Path):
    feed = tmp_path / "feed.jsonl"
    events = [
        valid_event("pain.condition.recorded.v1", id="c", onset_date="2025-01-01"),
        valid_event("pain.score.recorded.v1", id="s", score=7, time="2026-06-01T00:00:00Z"),
        valid_event(
            "pain.trial.started.v1",
            id="t",
            trial_id="t-1",
            drug="gabapentin",
            daily_dose=900,
            dose_unit="mg",
            time="2026-02-01T00:00:00Z",
        ),
    ]
    feed.write_text("\n".join(json.dumps(event) for event in events) + "\n")

    result = run_classify(str(feed), "--as-of", AS_OF, "--explain")

    assert result.returncode == 0, result.stderr
    assert "UNDER TREATMENT" in result.stdout
    assert "gabapentin 900 mg/day is below the adequate 1200 mg/day" in result.stdout


def test_classify_refuses_a_malformed_policy_file_with_the_reason(tmp_path: Path):
    feed = tmp_path / "feed.jsonl"
    feed.write_text(line() + "\n")
    policy = tmp_path / "policy.toml"
    policy.write_text('id = "broken"\nchronic_days = -1\n')

    result = run_classify(str(feed), "--as-of", AS_OF, "--policy", str(policy))

    assert result.returncode == 2
    assert "error: policy" in result.stderr


def test_a_classifier_worker_refuses_a_malformed_policy_file_at_start(tmp_path: Path):
    policy = tmp_path / "policy.toml"
    policy.write_text("this is = not [toml\n")

    result = subprocess.run(
        [sys.executable, "-m", "painpath", "classifier"],
        env={**os.environ, "CLASSIFIER_POLICY_FILE": str(policy)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "error: policy" in result.stderr


def test_the_stream_s_expected_outcome_counts_every_kind_of_dead_letter():
    from datetime import UTC, datetime

    from services.classifier.offline import expected_from_records
    from services.classifier.policy import load_policy

    good = line(id="e1", score=5)
    records = [
        (b"p-1842", good.encode()),
        (b"p-1842", b"\xff\xfe"),  # not UTF-8
        (b"someone-else", line(id="e2").encode()),  # a key other than the patient id
        (b"p-1842", line(id="e1", score=6).encode()),  # the same (source, id), other content
        (b"p-1842", good.encode()),  # a plain duplicate: not a dead letter
    ]

    expected, dead = expected_from_records(
        records, load_policy(), datetime(2026, 6, 30, tzinfo=UTC)
    )

    assert dead == 3
    assert list(expected) == ["p-1842"]
    assert [ref.id for ref in expected["p-1842"].evidence_event_ids] == ["e1"]
