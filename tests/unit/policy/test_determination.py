"""The determination: its deterministic id and its shape."""

import json
from datetime import UTC, datetime, timedelta

from clinical_events import AS_OF, History, chronic_history, day, determine, refractory_history

from services.classifier.determination import determination_id
from shared.contract import (
    AssessmentPart,
    Classification,
    Determination,
    DoseUnit,
    EventRef,
    Status,
    Trial,
    TrialOutcome,
)


def test_same_evidence_gives_the_same_id_on_another_day():
    history = refractory_history()
    today, tomorrow = determine(history), determine(history, as_of=AS_OF + timedelta(days=1))
    assert today.pain_days + 1 == tomorrow.pain_days
    assert today.determination_id == tomorrow.determination_id


def test_new_evidence_gives_a_new_id():
    history = refractory_history()
    before = determine(history)
    history.assess(day(140), "functional_assessment")
    after = determine(history)
    assert before.status == after.status
    assert before.determination_id != after.determination_id


def test_status_changed_by_time_alone_gives_a_new_id():
    history = History()
    history.condition(day(0), day(-60).date())
    before, after = determine(history, as_of=day(29)), determine(history, as_of=day(30))
    assert (before.status, after.status) == ("not_chronic", "under_treatment")
    assert before.determination_id != after.determination_id


def test_trial_reaching_its_minimum_days_gives_a_new_id():
    history = chronic_history()
    history.score(day(-1), 8)
    history.start(day(0), "t-1", "gabapentin", 1200)
    before, after = determine(history, as_of=day(27)), determine(history, as_of=day(28))
    assert [t.outcome for t in (*before.trials, *after.trials)] == ["in_progress", "unevaluable"]
    assert before.determination_id != after.determination_id


def test_determination_round_trips_through_json_with_its_id():
    determination = determine(refractory_history())
    published = determination.model_dump_json()
    assert '"determination_id"' in published
    received = Determination.model_validate_json(published)
    assert received.model_dump() == determination.model_dump()
    assert received.determination_id == determination.determination_id


def test_every_reason_has_a_code_and_one_line_of_text():
    determination = determine(refractory_history())
    assert all(r.code and r.text and "\n" not in r.text for r in determination.reasons)
    assert determination.policy == "default-v1"


def _id_from_model_dump(determination) -> str:
    """The id as first defined: model_dump of the decision's fields, plus each trial's outcome."""
    import hashlib
    import json

    decision = determination.model_dump(
        mode="json",
        include={
            "policy",
            "patient_id",
            "status",
            "classification",
            "failed_drugs",
            "failed_classes",
            "combination_failed",
            "missing_assessments",
            "evidence_event_ids",
        },
    )
    decision["trials"] = [[t.trial_id, t.outcome.value] for t in determination.trials]
    canonical = json.dumps(decision, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_the_fast_determination_id_equals_the_model_dump_definition_over_a_cohort():
    """Ids are stored and published: the faster derivation must not change a single one."""
    from datetime import UTC, datetime

    from painpath.simulate import simulate
    from services.classifier.offline import read_histories
    from services.classifier.policy import load_policy
    from services.classifier.rules import evaluate

    lines = [line if isinstance(line, str) else json.dumps(line) for line in simulate(60, 5)]
    histories, _ = read_histories(lines)
    policy, as_of = load_policy(), datetime(2026, 6, 30, tzinfo=UTC)
    statuses = set()
    for history in histories.values():
        determination = evaluate(history.events, policy, as_of)
        statuses.add(determination.status)
        assert determination.determination_id == _id_from_model_dump(determination)
    assert len(statuses) >= 3  # the cohort exercises several kinds of determination


def test_the_id_of_a_decision_is_the_one_published_before_the_determination_became_a_contract():
    """Pinned: the id this decision had when the classifier owned the model (`identified()`)."""
    trial = Trial(
        trial_id="t-1",
        drug="gabapentin",
        in_formulary=True,
        drug_class="gabapentinoid",
        started_at=datetime(2026, 1, 2, 9, tzinfo=UTC),
        stopped_at=None,
        stop_reason=None,
        daily_dose=1800,
        dose_unit=DoseUnit.MG,
        minimum_dose=1200,
        minimum_dose_unit=DoseUnit.MG,
        minimum_days=28,
        adequate_from=None,
        adequate_until=None,
        baseline=8,
        on_treatment=7,
        reduction=0.125,
        outcome=TrialOutcome.FAILED,
    )
    decided = determination_id(
        policy="default-v1",
        patient_id="p-1842",
        status=Status.REFRACTORY_SUSPECTED,
        classification=Classification.NEUROPATHIC,
        failed_drugs=["gabapentin"],
        failed_classes=["gabapentinoid"],
        combination_failed=False,
        missing_assessments=[AssessmentPart.DIAGNOSTIC],
        evidence_event_ids=[
            EventRef(source="urn:hospital:st-olaf:ehr", id="\u00e9vt-1"),
            EventRef(source="urn:x", id="2"),
        ],
        trials=[trial],
    )
    assert decided == "047f7b9b1bce11c1ad7d799e3798d754fa32a5055afa3dbafe94715157a73d8b"
