"""The care plan a determination calls for, by status, classification, missing parts and trials."""

import pytest
from coordinator_samples import confirmed, determination, suspected, trial

from services.coordinator.care_plan import TaskSpec, plan_for
from services.coordinator.templates import Priority, Role, load_templates
from shared.contract import AssessmentPart, Classification, Status, TrialOutcome

TEMPLATES = load_templates()
CORE = [
    "case_conference",
    "pain_psychology_intake",
    "physical_therapy_plan",
    "mood_sleep_screening",
    "polypharmacy_review",
]
INTERVENTIONAL = {
    "scs_psychological_screening",
    "scs_trial_stimulation",
    "scs_implant_evaluation",
    "drg_stimulation_evaluation",
    "medial_branch_blocks",
    "rfa_evaluation",
}


def by_key(plan: list[TaskSpec]) -> dict[str, TaskSpec]:
    return {spec.key: spec for spec in plan}


@pytest.mark.parametrize("status", [Status.NOT_CHRONIC, Status.UNDER_TREATMENT, Status.RESPONDING])
def test_a_status_short_of_refractory_calls_for_nothing(status: Status):
    missing = [AssessmentPart.PHYSICAL_EXAM]
    trials = [trial("gabapentin", TrialOutcome.UNEVALUABLE)]
    assert (
        plan_for(determination(status, Classification.NEUROPATHIC, missing, trials), TEMPLATES)
        == []
    )


@pytest.mark.parametrize(
    ("part", "key", "role"),
    [
        (AssessmentPart.MEDICATION_HISTORY, "medication_history_review", Role.PHARMACIST),
        (AssessmentPart.PHYSICAL_EXAM, "physical_examination", Role.PAIN_SPECIALIST),
        (AssessmentPart.NEUROLOGICAL_EXAM, "neurological_examination", Role.PAIN_SPECIALIST),
        (AssessmentPart.CLASSIFICATION, "neurological_examination", Role.PAIN_SPECIALIST),
        (AssessmentPart.DIAGNOSTIC, "mri", Role.PAIN_SPECIALIST),
    ],
)
def test_suspected_completes_the_missing_assessment_part(
    part: AssessmentPart, key: str, role: Role
):
    plan = plan_for(suspected(part, classification=Classification.NOCIPLASTIC), TEMPLATES)
    assert [spec.key for spec in plan] == [key]
    assert plan[0].role is role
    assert plan[0].reason == f"assessment incomplete: {part.value} missing"


def test_suspected_names_every_missing_part_a_task_completes():
    plan = plan_for(
        suspected(AssessmentPart.NEUROLOGICAL_EXAM, AssessmentPart.CLASSIFICATION), TEMPLATES
    )
    assert [spec.reason for spec in plan] == [
        "assessment incomplete: neurological_exam, classification missing"
    ]


@pytest.mark.parametrize(
    ("classification", "work_up"),
    [
        (Classification.NEUROPATHIC, ["mri", "nerve_conduction_study"]),
        (Classification.NOCICEPTIVE, ["mri", "diagnostic_block"]),
        (Classification.MIXED, ["mri", "nerve_conduction_study", "diagnostic_block"]),
        (Classification.NOCIPLASTIC, ["mri"]),
        (None, ["mri"]),
    ],
)
def test_diagnostic_work_up_follows_the_suspected_source(
    classification: Classification | None, work_up: list[str]
):
    plan = plan_for(suspected(AssessmentPart.DIAGNOSTIC, classification=classification), TEMPLATES)
    assert [spec.key for spec in plan] == work_up


def test_nerve_conduction_study_reason_names_the_classification():
    plan = plan_for(
        suspected(AssessmentPart.DIAGNOSTIC, classification=Classification.NEUROPATHIC), TEMPLATES
    )
    assert by_key(plan)["nerve_conduction_study"].reason == (
        "assessment incomplete: diagnostic missing; classification is neuropathic"
    )


def test_diagnostic_block_waits_on_the_examination_only_when_that_is_in_the_plan():
    examined = plan_for(
        suspected(AssessmentPart.DIAGNOSTIC, classification=Classification.NOCICEPTIVE), TEMPLATES
    )
    assert by_key(examined)["diagnostic_block"].prerequisites == ()
    unexamined = plan_for(
        suspected(
            AssessmentPart.DIAGNOSTIC,
            AssessmentPart.PHYSICAL_EXAM,
            classification=Classification.NOCICEPTIVE,
        ),
        TEMPLATES,
    )
    assert by_key(unexamined)["diagnostic_block"].prerequisites == ("physical_examination",)


def test_unevaluable_trials_call_for_recording_pain_scores():
    trials = [
        trial("gabapentin", TrialOutcome.UNEVALUABLE),
        trial("duloxetine", TrialOutcome.FAILED),
        trial("pregabalin", TrialOutcome.UNEVALUABLE),
    ]
    plan = plan_for(suspected(AssessmentPart.PHYSICAL_EXAM, trials=trials), TEMPLATES)
    record = by_key(plan)["record_pain_scores"]
    assert record.role is Role.CARE_COORDINATOR
    assert record.reason == "unevaluable trials of gabapentin, pregabalin"
    assert "dose_optimisation" not in by_key(plan)


def test_inadequate_trials_call_for_dose_optimisation():
    trials = [trial("amitriptyline", TrialOutcome.INADEQUATE)]
    plan = plan_for(suspected(AssessmentPart.DIAGNOSTIC, trials=trials), TEMPLATES)
    optimise = by_key(plan)["dose_optimisation"]
    assert optimise.role is Role.PHARMACIST
    assert optimise.reason == "inadequate trial of amitriptyline"
    assert "record_pain_scores" not in by_key(plan)


@pytest.mark.parametrize("classification", list(Classification))
def test_confirmed_starts_with_the_urgent_case_conference_and_the_core_team(
    classification: Classification,
):
    plan = plan_for(confirmed(classification), TEMPLATES)
    assert [spec.key for spec in plan][: len(CORE)] == CORE
    conference = plan[0]
    assert (conference.role, conference.priority, conference.due_days) == (
        Role.CARE_COORDINATOR,
        Priority.URGENT,
        7,
    )
    assert conference.reason == "status is refractory_confirmed"
    after_conference = {"case_conference"}
    for spec in plan:
        if after_conference & set(spec.prerequisites):
            after_conference.add(spec.key)
    # Screening scores inform the conference, so only the screening goes ahead of it.
    assert {spec.key for spec in plan} - after_conference == {"mood_sleep_screening"}


def test_confirmed_core_tasks_are_the_clinical_ones():
    plan = by_key(plan_for(confirmed(Classification.NOCIPLASTIC), TEMPLATES))
    assert plan["pain_psychology_intake"].description == "Pain psychology intake: CBT or ACT."
    assert plan["pain_psychology_intake"].role is Role.PAIN_PSYCHOLOGIST
    assert "functional goals for daily living" in plan["physical_therapy_plan"].description
    assert plan["physical_therapy_plan"].role is Role.PHYSICAL_THERAPIST
    assert plan["mood_sleep_screening"].role is Role.PAIN_PSYCHOLOGIST
    assert "combining classes, topical agents" in plan["polypharmacy_review"].description
    assert plan["polypharmacy_review"].role is Role.PHARMACIST


def test_confirmed_neuropathic_gets_the_stimulation_chain_and_drg():
    plan = by_key(plan_for(confirmed(Classification.NEUROPATHIC), TEMPLATES))
    assert INTERVENTIONAL & plan.keys() == {
        "scs_psychological_screening",
        "scs_trial_stimulation",
        "scs_implant_evaluation",
        "drg_stimulation_evaluation",
    }
    assert plan["scs_psychological_screening"].prerequisites == ("case_conference",)
    assert plan["scs_trial_stimulation"].prerequisites == ("scs_psychological_screening",)
    assert plan["scs_implant_evaluation"].prerequisites == ("scs_trial_stimulation",)
    assert plan["drg_stimulation_evaluation"].prerequisites == ("scs_psychological_screening",)
    assert plan["scs_trial_stimulation"].reason == (
        "status is refractory_confirmed; classification is neuropathic"
    )


def test_confirmed_nociceptive_gets_medial_branch_blocks_then_ablation():
    plan = by_key(plan_for(confirmed(Classification.NOCICEPTIVE), TEMPLATES))
    assert INTERVENTIONAL & plan.keys() == {"medial_branch_blocks", "rfa_evaluation"}
    assert plan["medial_branch_blocks"].prerequisites == ("case_conference",)
    assert plan["rfa_evaluation"].prerequisites == ("medial_branch_blocks",)
    assert plan["rfa_evaluation"].role is Role.INTERVENTIONALIST


def test_confirmed_mixed_gets_the_first_step_of_both_pathways():
    plan = by_key(plan_for(confirmed(Classification.MIXED), TEMPLATES))
    assert INTERVENTIONAL & plan.keys() == {"scs_psychological_screening", "medial_branch_blocks"}


def test_confirmed_nociplastic_gets_no_interventional_task():
    plan = plan_for(confirmed(Classification.NOCIPLASTIC), TEMPLATES)
    assert [spec.key for spec in plan] == CORE


def test_every_prerequisite_of_a_plan_is_in_the_plan_and_comes_before_it():
    for classification in [*Classification, None]:
        for status in (Status.REFRACTORY_SUSPECTED, Status.REFRACTORY_CONFIRMED):
            plan = plan_for(
                determination(
                    status,
                    classification,
                    list(AssessmentPart),
                    [trial("gabapentin", TrialOutcome.UNEVALUABLE)],
                ),
                TEMPLATES,
            )
            seen: set[str] = set()
            for spec in plan:
                assert set(spec.prerequisites) <= seen
                seen.add(spec.key)


def test_a_prerequisite_not_called_for_is_looked_through_to_its_own(tmp_path):
    text = """
id = "chain-v1"
[[tasks]]
key = "first"
title = "First"
description = "Always first."
role = "care_coordinator"
due_days = 7
when = { statuses = ["refractory_confirmed"] }
[[tasks]]
key = "middle"
title = "Middle"
description = "Only for neuropathic pain."
role = "pain_specialist"
due_days = 14
prerequisites = ["first"]
when = { statuses = ["refractory_confirmed"], classifications = ["neuropathic"] }
[[tasks]]
key = "last"
title = "Last"
description = "For everyone, after the middle step where there is one."
role = "pharmacist"
due_days = 21
prerequisites = ["middle"]
when = { statuses = ["refractory_confirmed"] }
"""
    path = tmp_path / "chain.toml"
    path.write_text(text)
    templates = load_templates(path)
    plan = by_key(plan_for(confirmed(Classification.NOCIPLASTIC), templates))
    assert plan.keys() == {"first", "last"}
    assert plan["last"].prerequisites == ("first",)
    assert by_key(plan_for(confirmed(Classification.NEUROPATHIC), templates))[
        "last"
    ].prerequisites == ("middle",)
