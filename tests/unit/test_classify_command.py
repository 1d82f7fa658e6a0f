"""`painpath classify` and the admission of events it shares with the streaming classifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.classifier.history import Admission, PatientHistory
from services.classifier.offline import read_histories
from shared.contract import MAX_EVENT_BYTES, parse_event
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


def test_a_history_keeps_only_texts_by_default_and_parses_them_when_asked():
    history = PatientHistory()
    text = line(id="e0", score=1)
    history.admit(parse_event(text), text)

    assert history._parsed is None  # texts only
    assert [event.id for event in history.events] == ["e0"]


def test_a_history_that_forgot_its_parsed_events_parses_them_again():
    history = PatientHistory.keeping_parsed()
    for number in range(3):
        text = line(id=f"e{number}", score=number)
        history.admit(parse_event(text), text)
    history.forget_parsed()
    history.admit(parse_event(line(id="e3", score=3)), line(id="e3", score=3))

    assert [event.id for event in history.events] == ["e0", "e1", "e2", "e3"]


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


# -- one code path with the stream: bytes, sizes, encodings; a patient whose decision raises ----


def test_a_line_is_read_as_the_stream_reads_a_record_s_value():
    from shared.contract.records import Rejection, read_record, read_value

    for value in (b"\xff\xfe", b"x" * (MAX_EVENT_BYTES + 1), b"{oops", line(score=11).encode()):
        from_line, from_record = read_value(value), read_record(b"p-1842", value)
        assert isinstance(from_line, Rejection)
        assert from_line == from_record
    event, text = read_value(line(id="e1").encode())
    assert read_record(b"p-1842", text.encode()) == (event, text)
    assert read_record(b"someone-else", text.encode()).kind == "key"  # the key: the stream only


def test_file_lines_drop_line_ends_and_cut_an_over_long_line_short():
    from io import BytesIO

    from services.classifier.offline import file_lines

    big = b"y" * 5_000
    stream = BytesIO(b"a\r\nb\n" + big + b"\n\n" + b"z" * 10 + b"\nlast")

    lines = list(file_lines(stream, limit=100))

    assert lines[:2] == [b"a", b"b"]
    assert 100 < len(lines[2]) < len(big)  # long enough to be refused, never held whole
    assert lines[3:] == [b"", b"z" * 10, b"last"]


def test_classify_reports_a_line_that_is_not_utf8_and_classifies_the_rest(tmp_path: Path):
    feed = tmp_path / "feed.jsonl"
    good = line(id="e1", patient_id="pt-utf8-000001", time="2026-01-01T00:00:00Z")
    latin1 = line(id="e2", patient_id="pt-utf8-000002").replace("st-olaf", "st-\u00f6laf")
    feed.write_bytes(good.encode() + b"\n" + latin1.encode("latin-1") + b"\n")

    result = run_classify(str(feed), "--as-of", AS_OF)

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "line 2: (event): not UTF-8 text"
    assert [json.loads(row)["patient_id"] for row in result.stdout.splitlines()] == [
        "pt-utf8-000001"
    ]


def test_classify_reports_an_over_long_line_and_classifies_the_rest(tmp_path: Path):
    feed = tmp_path / "feed.jsonl"
    huge = line(id="e2", patient_id="pt-long-000002")[:-1] + ', "pad": "' + "x" * 600_000 + '"}'
    rows = [line(id="e1", patient_id="pt-long-000001", time="2026-01-01T00:00:00Z"), huge]
    feed.write_text("\r\n".join([*rows, rows[0]]) + "\r\n")  # CRLF ends, and a duplicate

    result = run_classify(str(feed), "--as-of", AS_OF)

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"line 2: (event): larger than {MAX_EVENT_BYTES // 1024} KiB"
    assert [json.loads(row)["patient_id"] for row in result.stdout.splitlines()] == [
        "pt-long-000001"
    ]


def test_classify_reports_a_contract_violation_among_good_lines_by_its_number(tmp_path: Path):
    feed = tmp_path / "feed.jsonl"
    patients = ["pt-mix-000001", "pt-mix-000002"]
    rows = [line(id=f"e-{p}", patient_id=p, time="2026-01-01T00:00:00Z") for p in patients]
    bad = line(id="e-bad", patient_id=patients[0], score=11)
    feed.write_text("\n".join([rows[0], "", bad, rows[1]]) + "\n")

    result = run_classify(str(feed), "--as-of", AS_OF)

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "line 3: data.score: nrs score must be a whole number from 0 to 10"
    ]
    assert [json.loads(row)["patient_id"] for row in result.stdout.splitlines()] == patients


def raise_for(monkeypatch, module, patient_id: str) -> None:
    """`module.evaluate` raises OverflowError (a rule's bug) for one patient."""
    real = module.evaluate

    def evaluate(events, policy, as_of):
        events = list(events)
        if events[0].data.patient_id == patient_id:
            raise OverflowError("date value out of range, with a value: 0001-01-01")
        return real(events, policy, as_of)

    monkeypatch.setattr(module, "evaluate", evaluate)


def test_classify_sets_aside_a_patient_whose_decision_raises_and_prints_the_others(
    tmp_path: Path, monkeypatch
):
    from typer.testing import CliRunner

    import services.classifier.offline as offline
    from painpath.cli import app

    poison, good = "pt-raise-000001", "pt-raise-000002"
    feed = tmp_path / "feed.jsonl"
    rows = [
        line(id="p1", patient_id=poison, time="2026-01-01T00:00:00Z"),
        line(id="g1", patient_id=good, time="2026-01-01T00:00:00Z"),
        line(id="p2", patient_id=poison, time="2026-02-01T00:00:00Z"),
        line(id="p3", patient_id=poison, time="2026-03-01T00:00:00Z"),
        line(id="p1", patient_id=poison, time="2026-01-01T00:00:00Z"),  # a duplicate
        "not json",
    ]
    feed.write_text("\n".join(rows) + "\n")
    raise_for(monkeypatch, offline, poison)

    result = CliRunner().invoke(app, ["classify", str(feed), "--as-of", AS_OF])

    assert result.exit_code == 0, result.output
    assert [json.loads(row)["patient_id"] for row in result.stdout.splitlines()] == [good]
    assert result.stderr.splitlines() == [
        "line 6: (event): not valid JSON",
        "lines 1, 3-4: deciding this patient raised OverflowError in"
        " tests.unit.test_classify_command.evaluate; set aside (no determination), the others"
        " are classified",
    ]
    assert poison not in result.stderr and "0001-01-01" not in result.stderr


def test_the_stream_s_expected_outcome_has_no_determination_for_a_patient_that_raises(
    monkeypatch,
):
    from datetime import UTC, datetime

    import services.classifier.offline as offline
    from services.classifier.policy import load_policy

    raise_for(monkeypatch, offline, "pt-raise-000001")
    records = [
        (p.encode(), line(id=f"e-{p}", patient_id=p).encode())
        for p in ("pt-raise-000001", "pt-raise-000002")
    ]

    expected, dead = offline.expected_from_records(
        records, load_policy(), datetime(2026, 6, 30, tzinfo=UTC)
    )

    assert list(expected) == ["pt-raise-000002"]
    assert dead == 0


def test_classify_refuses_an_as_of_outside_the_contract_s_instants(tmp_path: Path):
    feed = tmp_path / "feed.jsonl"
    feed.write_text(line(time="2026-01-01T00:00:00Z") + "\n")

    for outside in (
        "1899-12-31T23:59:59Z",
        "1900-01-01T00:00:00+00:01",
        "9999-12-31T00:00:01Z",
        "0001-01-01T00:00:00+23:59",  # off the calendar once in UTC
        "9999-12-31T23:59:59-12:00",
    ):
        result = run_classify(str(feed), "--as-of", outside)
        assert result.returncode == 2, (outside, result.stderr)
        assert "--as-of" in result.stderr and "must lie within" in result.stderr, outside
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    for bound in ("1900-01-01T00:00:00Z", "9999-12-31T00:00:00Z", "9999-12-31T10:00:00+10:00"):
        result = run_classify(str(feed), "--as-of", bound)
        assert result.returncode == 0, (bound, result.stderr)
        assert json.loads(result.stdout)["as_of"].startswith(bound[:10])
