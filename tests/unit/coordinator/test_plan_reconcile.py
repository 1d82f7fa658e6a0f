"""Reconciling a patient's tasks with a new determination: add what is new, cancel what is no
longer called for, and never touch what was done."""

from coordinator_samples import confirmed, determination, suspected

from services.coordinator.care_plan import (
    ExistingTask,
    PlanChange,
    TaskSpec,
    TaskState,
    plan_for,
    reconcile,
)
from services.coordinator.templates import load_templates
from shared.contract import AssessmentPart, Classification, Status

TEMPLATES = load_templates()


def created(plan: list[TaskSpec], state: TaskState = TaskState.PROPOSED) -> list[ExistingTask]:
    return [ExistingTask(spec.key, state) for spec in plan]


def test_a_first_determination_adds_its_whole_plan():
    plan = plan_for(confirmed(Classification.NEUROPATHIC), TEMPLATES)
    assert reconcile([], plan) == PlanChange(add=plan, cancel=[])


def test_the_same_determination_twice_changes_nothing():
    plan = plan_for(confirmed(Classification.NEUROPATHIC), TEMPLATES)
    change = reconcile(created(plan), plan)
    assert change.empty
    assert change == PlanChange(add=[], cancel=[])


def test_open_tasks_in_any_open_state_count_as_there():
    plan = plan_for(confirmed(Classification.NOCIPLASTIC), TEMPLATES)
    states = [TaskState.PROPOSED, TaskState.ACCEPTED, TaskState.IN_PROGRESS]
    existing = [ExistingTask(spec.key, states[i % 3]) for i, spec in enumerate(plan)]
    assert reconcile(existing, plan).empty


def test_leaving_refractory_cancels_open_tasks_with_the_reason_and_leaves_done_ones():
    responding = determination(Status.RESPONDING, Classification.NOCICEPTIVE)
    existing = [
        ExistingTask("case_conference", TaskState.COMPLETED),
        ExistingTask("pain_psychology_intake", TaskState.IN_PROGRESS),
        ExistingTask("physical_therapy_plan", TaskState.ACCEPTED),
        ExistingTask("polypharmacy_review", TaskState.PROPOSED),
        ExistingTask("medial_branch_blocks", TaskState.CANCELLED),
    ]
    change = reconcile(existing, plan_for(responding, TEMPLATES), responding)
    assert change.add == []
    reason = "no longer called for: status is responding"
    assert change.cancel == [
        ("pain_psychology_intake", reason),
        ("physical_therapy_plan", reason),
        ("polypharmacy_review", reason),
    ]


def test_without_the_determination_the_cancel_reason_says_the_plan_changed():
    change = reconcile([ExistingTask("mri", TaskState.PROPOSED)], [])
    assert change.cancel == [("mri", "no longer called for: the plan changed")]


def test_a_completed_task_is_not_recreated_when_still_wanted():
    plan = plan_for(confirmed(Classification.NOCIPLASTIC), TEMPLATES)
    existing = created(plan, TaskState.COMPLETED)
    assert reconcile(existing, plan).empty


def test_a_change_of_plan_adds_only_what_is_new_and_cancels_what_went():
    before = suspected(
        AssessmentPart.PHYSICAL_EXAM,
        AssessmentPart.DIAGNOSTIC,
        classification=Classification.NOCICEPTIVE,
    )
    existing = created(plan_for(before, TEMPLATES))
    after = confirmed(Classification.NOCICEPTIVE)
    change = reconcile(existing, plan_for(after, TEMPLATES), after)
    assert [spec.key for spec in change.add] == [spec.key for spec in plan_for(after, TEMPLATES)]
    reason = "no longer called for: status is refractory_confirmed, classification is nociceptive"
    assert change.cancel == [
        ("diagnostic_block", reason),
        ("mri", reason),
        ("physical_examination", reason),
    ]


def test_a_reclassification_adds_the_new_pathway_and_cancels_the_old_one():
    mixed = confirmed(Classification.MIXED)
    existing = created(plan_for(mixed, TEMPLATES))
    existing[0] = ExistingTask("case_conference", TaskState.COMPLETED)
    neuropathic = confirmed(Classification.NEUROPATHIC)
    change = reconcile(existing, plan_for(neuropathic, TEMPLATES), neuropathic)
    assert [spec.key for spec in change.add] == [
        "scs_trial_stimulation",
        "scs_implant_evaluation",
        "drg_stimulation_evaluation",
    ]
    assert change.cancel == [
        (
            "medial_branch_blocks",
            "no longer called for: status is refractory_confirmed, classification is neuropathic",
        )
    ]


def test_a_part_completed_in_a_suspected_case_cancels_only_its_task():
    before = suspected(AssessmentPart.MEDICATION_HISTORY, AssessmentPart.PHYSICAL_EXAM)
    after = suspected(AssessmentPart.MEDICATION_HISTORY)
    change = reconcile(created(plan_for(before, TEMPLATES)), plan_for(after, TEMPLATES), after)
    assert change.add == []
    assert change.cancel == [
        (
            "physical_examination",
            "no longer called for: status is refractory_suspected, missing medication_history, "
            "no classification",
        )
    ]


def test_a_cancelled_task_wanted_again_is_added_again():
    plan = plan_for(confirmed(Classification.NOCIPLASTIC), TEMPLATES)
    existing = created(plan)
    existing[1] = ExistingTask(plan[1].key, TaskState.CANCELLED)
    change = reconcile(existing, plan)
    assert change.add == [plan[1]]
    assert change.cancel == []


def test_a_task_cancelled_once_and_open_again_is_not_added_twice():
    plan = plan_for(confirmed(Classification.NOCIPLASTIC), TEMPLATES)
    existing = [ExistingTask(plan[1].key, TaskState.CANCELLED), *created(plan)]
    assert reconcile(existing, plan).empty


def test_an_open_task_listed_twice_is_cancelled_once():
    existing = [ExistingTask("mri", TaskState.PROPOSED), ExistingTask("mri", TaskState.ACCEPTED)]
    assert [key for key, _ in reconcile(existing, []).cancel] == ["mri"]


def test_states_read_back_as_text_reconcile_like_states():
    plan = plan_for(confirmed(Classification.NOCIPLASTIC), TEMPLATES)
    existing = [ExistingTask(spec.key, "cancelled") for spec in plan]
    assert reconcile(existing, plan).add == plan
