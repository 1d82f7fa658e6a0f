"""Care-plan templates are data: the default file loads, and a bad file is refused clearly."""

from pathlib import Path

import pytest

from services.coordinator.templates import (
    DEFAULT_TEMPLATES_PATH,
    Priority,
    Role,
    TemplateError,
    load_templates,
)
from shared.contract import Status


def write_templates(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_TEMPLATES_PATH.read_text()
    assert old in text
    path = tmp_path / "templates.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def refusal(path: Path) -> str:
    with pytest.raises(TemplateError) as refused:
        load_templates(path)
    return str(refused.value)


def test_default_templates_load_as_default_v1():
    templates = load_templates()
    assert templates.id == "default-v1"
    assert len({task.key for task in templates.tasks}) == len(templates.tasks)
    assert {task.role for task in templates.tasks} == set(Role)


def test_default_templates_call_for_tasks_only_when_refractory():
    statuses = {status for task in load_templates().tasks for status in task.when.statuses}
    assert statuses == {Status.REFRACTORY_SUSPECTED, Status.REFRACTORY_CONFIRMED}


def test_case_conference_is_urgent_due_in_a_week_and_waits_on_nothing():
    conference = load_templates().task("case_conference")
    assert (conference.role, conference.priority) == (Role.CARE_COORDINATOR, Priority.URGENT)
    assert (conference.due_days, conference.prerequisites) == (7, [])


def test_neuromodulation_and_ablation_chains_are_prerequisites_in_the_data():
    templates = load_templates()
    assert templates.task("scs_psychological_screening").prerequisites == ["case_conference"]
    assert templates.task("scs_trial_stimulation").prerequisites == ["scs_psychological_screening"]
    assert templates.task("scs_implant_evaluation").prerequisites == ["scs_trial_stimulation"]
    drg = templates.task("drg_stimulation_evaluation")
    assert drg.prerequisites == ["scs_psychological_screening"]
    assert "focal neuropathic pain or lower-limb CRPS" in drg.description
    assert templates.task("rfa_evaluation").prerequisites == ["medial_branch_blocks"]


def test_an_unknown_field_is_refused_by_name(tmp_path: Path):
    path = write_templates(tmp_path, 'key = "case_conference"', 'key = "case_conference"\nteam = 3')
    assert "tasks[8].team: Extra inputs are not permitted" in refusal(path)


def test_an_unknown_role_is_refused_by_name(tmp_path: Path):
    path = write_templates(tmp_path, 'role = "pharmacist"', 'role = "chemist"')
    assert "tasks[0].role: Input should be" in refusal(path)


def test_a_priority_that_fhir_does_not_know_is_refused(tmp_path: Path):
    path = write_templates(tmp_path, 'priority = "urgent"', 'priority = "soon"')
    assert "tasks[8].priority:" in refusal(path)


def test_an_unknown_status_or_classification_in_when_is_refused(tmp_path: Path):
    status = write_templates(tmp_path, '"refractory_suspected"]', '"refractory"]')
    assert "tasks[0].when.statuses[0]:" in refusal(status)
    classification = write_templates(tmp_path, '["neuropathic", "mixed"]', '["neuropatic"]')
    assert "tasks[4].when.classifications: `neuropatic` is not one of" in refusal(classification)


def test_a_task_called_for_by_no_status_is_refused(tmp_path: Path):
    path = write_templates(
        tmp_path,
        'when = { statuses = ["refractory_suspected"], missing = ["medication_history"] }',
        'when = { statuses = [], missing = ["medication_history"] }',
    )
    assert "tasks[0].when.statuses:" in refusal(path)


def test_an_unknown_prerequisite_key_is_refused(tmp_path: Path):
    path = write_templates(
        tmp_path, 'prerequisites = ["medial_branch_blocks"]', 'prerequisites = ["mbb"]'
    )
    assert "prerequisites: `mbb` is not a task key" in refusal(path)


def test_a_prerequisite_cycle_is_refused_naming_the_cycle(tmp_path: Path):
    path = write_templates(
        tmp_path,
        'due_days = 7\nwhen = { statuses = ["refractory_confirmed"] }',
        'due_days = 7\nprerequisites = ["polypharmacy_review"]\n'
        'when = { statuses = ["refractory_confirmed"] }',
    )
    assert "prerequisite cycle case_conference -> polypharmacy_review -> case_conference" in (
        refusal(path)
    )


def test_a_task_waiting_on_itself_is_a_cycle(tmp_path: Path):
    path = write_templates(
        tmp_path, 'prerequisites = ["physical_examination"]', 'prerequisites = ["diagnostic_block"]'
    )
    assert "prerequisite cycle diagnostic_block -> diagnostic_block" in refusal(path)


def test_a_key_listed_twice_is_refused(tmp_path: Path):
    path = write_templates(tmp_path, 'key = "mri"', 'key = "physical_examination"')
    assert "tasks[3].key: `physical_examination` is listed twice" in refusal(path)


def test_a_task_due_no_later_than_its_prerequisite_is_refused(tmp_path: Path):
    path = write_templates(
        tmp_path,
        'due_days = 70\nprerequisites = ["medial_branch_blocks"]',
        'due_days = 42\nprerequisites = ["medial_branch_blocks"]',
    )
    assert "due_days: 42 is not after prerequisite `medial_branch_blocks`" in refusal(path)


def test_a_file_that_is_not_toml_or_not_there_is_refused(tmp_path: Path):
    broken = tmp_path / "broken.toml"
    broken.write_text("id = [")
    assert "not valid TOML" in refusal(broken)
    assert "cannot be read" in refusal(tmp_path / "absent.toml")
