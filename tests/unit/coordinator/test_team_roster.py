"""The team roster is configuration: the default team loads, and a bad file is refused clearly."""

from collections import Counter
from pathlib import Path

import pytest

from services.coordinator.scheduling import DEFAULT_ROSTER_PATH, RosterError, load_roster
from services.coordinator.templates import Role


def write_roster(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_ROSTER_PATH.read_text()
    assert old in text
    path = tmp_path / "roster.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def refusal(path: Path) -> str:
    with pytest.raises(RosterError) as refused:
        load_roster(path)
    return str(refused.value)


def test_default_roster_has_two_pain_specialists_and_one_of_every_other_role():
    roster = load_roster()
    assert roster.id == "roster-default"
    assert Counter(person.role for person in roster.people) == {
        Role.PAIN_SPECIALIST: 2,
        Role.PHYSICAL_THERAPIST: 1,
        Role.PAIN_PSYCHOLOGIST: 1,
        Role.PHARMACIST: 1,
        Role.INTERVENTIONALIST: 1,
        Role.CARE_COORDINATOR: 1,
    }
    assert all(person.weekly_capacity > 0 and person.working_days for person in roster.people)


def test_an_unknown_role_is_refused_by_name(tmp_path: Path):
    path = write_roster(tmp_path, 'role = "pharmacist"', 'role = "chemist"')
    assert "people[4].role: Input should be" in refusal(path)


def test_a_missing_or_zero_capacity_is_refused(tmp_path: Path):
    missing = write_roster(tmp_path, "weekly_capacity = 12\n", "")
    assert "people[0].weekly_capacity: Field required" in refusal(missing)
    zero = write_roster(tmp_path, "weekly_capacity = 12", "weekly_capacity = 0")
    assert "people[0].weekly_capacity: Input should be greater than 0" in refusal(zero)


def test_a_day_that_is_not_a_weekday_is_refused(tmp_path: Path):
    path = write_roster(tmp_path, 'working_days = ["tue", "thu"]', 'working_days = ["tuesday"]')
    assert "people[5].working_days[0]:" in refusal(path)


def test_a_day_listed_twice_is_refused(tmp_path: Path):
    path = write_roster(tmp_path, 'working_days = ["tue", "thu"]', 'working_days = ["tue", "tue"]')
    assert "people[5]: working_days: a day is listed twice" in refusal(path)


def test_a_person_id_listed_twice_is_refused(tmp_path: Path):
    path = write_roster(tmp_path, 'id = "pain-specialist-2"', 'id = "pain-specialist-1"')
    assert "people[1].id: `pain-specialist-1` is listed twice" in refusal(path)


def test_an_unknown_field_is_refused_by_name(tmp_path: Path):
    path = write_roster(tmp_path, 'name = "Ravi Menon"', 'name = "Ravi Menon"\nbleep = 1')
    assert "people[4].bleep: Extra inputs are not permitted" in refusal(path)
